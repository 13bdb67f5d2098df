"""The floor of any router written with grpc.aio: a bare forwarder that implements Embed with nothing else
(no contract checks, admission, scheduler, cache, metrics or logs). It decodes the request, tokenizes it
with the model's tokenizer, sends the rows to Triton with the adapter's tensors, and encodes the reply.

What it adds over a direct call is the cost of one Python gRPC hop on this machine, which no router logic
can remove; the overhead bench runs it beside the router. It runs on the router's default event loop
(router/event_loop.py: uvloop where installed), so the two differ only in what the router does. Run as
`python -m bench.passthrough --triton ADDRESS --port PORT`.

With `--constant DIMS` it answers every Embed input with the same DIMS-float vector and neither tokenizes
nor calls Triton: the floor of one Python gRPC call that carries an embedding (bench/free.py).
"""

from __future__ import annotations

import argparse

import grpc

from bench.direct import DirectClient
from router import event_loop
from router.core.models.contract import Truncation
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc


class Passthrough(pb_grpc.ModelRouterServiceServicer):
    def __init__(self, direct: DirectClient) -> None:
        self.direct = direct

    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:  # noqa: N802 - gRPC's name
        splits = self.direct.tokenizer.split(list(request.inputs), 256, Truncation.END, 0)
        rows = await self.direct.infer([split.windows[0] for split in splits])
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=row.tolist()) for row in rows])


class Constant(pb_grpc.ModelRouterServiceServicer):
    def __init__(self, dimensions: int) -> None:
        self.values = [1.0 / dimensions**0.5] * dimensions

    async def Embed(self, request: pb.EmbedRequest, context) -> pb.EmbedResponse:  # noqa: N802 - gRPC's name
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=self.values) for _ in request.inputs])


async def serve(triton: str, model: str, port: int, constant: int | None = None) -> None:
    server = grpc.aio.server()
    servicer = Constant(constant) if constant else Passthrough(await DirectClient(triton, model).start())
    pb_grpc.add_ModelRouterServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triton", required=True)
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--constant", type=int, metavar="DIMS", help="answer with a constant vector instead")
    args = parser.parse_args()
    event_loop.run(serve(args.triton, args.model, args.port, args.constant), "auto")


if __name__ == "__main__":
    main()
