"""A light caller in a process of its own: one short Embed every `--interval` seconds for `--seconds`, timed
with a blocking gRPC stub, printed as JSON (each call's latency in seconds and its status code name).

The admission bench runs it beside its load generator, whose own event loop is busy with 50-60 calls a
second: a refusal timed there includes the generator's turns. The probe's refusals are what a caller with
nothing else to do sees: the router's answer, the network and the processes' turns on the shared cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import grpc

from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--deadline", type=float, default=2.0)
    args = parser.parse_args(argv)
    calls = []
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        request = pb.EmbedRequest(model=args.model, inputs=["a short probe"])
        stop = time.monotonic() + args.seconds
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                stub.Embed(request, timeout=args.deadline)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            calls.append((time.perf_counter() - started, code))
            time.sleep(args.interval)
    json.dump(calls, sys.stdout)


if __name__ == "__main__":
    main()
