"""Fuzzing every RPC of a real router (real Triton behind it) with requests built from the proto
descriptors (tests/fuzzing.py): no request may get INTERNAL or UNKNOWN, crash the router, or get a status
without ErrorInfo or over 8 KiB (what gRPC clients accept in trailers by default).

`make test` runs FUZZ_EXAMPLES (default 75) per RPC; `make fuzz` runs 3,400 per RPC (over 10,000 in all;
ListModels has no fields to vary) and writes the counts to bench/results/fuzz.json.
"""

from __future__ import annotations

import collections
import json
import os
import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings

from router.core.errors import RouterError
from router.grpc.gen.modelrouter.v1 import error_reason_pb2
from router.grpc.status import PUSHBACK_KEY, to_status
from router.settings import PROJECT_ROOT
from tests.fuzzing import SERVICE, request_of
from tests.helpers import EMBED_MODEL, GENERATE_MODEL, RERANK_MODEL

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "75"))
REPORT = os.environ.get("FUZZ_REPORT")
MODELS = {
    "Embed": [EMBED_MODEL],
    "Rerank": [RERANK_MODEL],
    "Generate": [GENERATE_MODEL],
    "ListModels": [""],
    "GetModel": [EMBED_MODEL, RERANK_MODEL],
    "EmbedStream": [EMBED_MODEL],
}
TRAILER_LIMIT = 8 * 1024
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def send(channel: grpc.Channel, method, request) -> None:
    path = f"/{SERVICE.full_name}/{method.name}"
    options = {"request_serializer": lambda m: m.SerializeToString(), "response_deserializer": lambda b: b}
    if method.client_streaming:  # the request and, now and then, the same again as a second part
        parts = [request, request] if len(request.SerializeToString()) % 2 else [request]
        call = channel.stream_stream(path, **options)(iter(parts), timeout=10)
        for count, _ in enumerate(call):
            if count == 2:
                call.cancel()
                break
    elif method.server_streaming:
        call = channel.unary_stream(path, **options)(request, timeout=10)
        for count, _ in enumerate(call):
            if count == 2:  # a few responses are enough; the rest of the stream is cancelled
                call.cancel()
                break
    else:
        channel.unary_unary(path, **options)(request, timeout=10)


def check_status(error: grpc.RpcError) -> str:
    code = error.code()
    assert code not in NEVER, f"{code}: {error.details()}"
    trailers = tuple(error.trailing_metadata() or ())
    details = dict(trailers).get("grpc-status-details-bin")
    if details is None:
        # Only the client's own: its deadline passed, or it cancelled the rest of a stream.
        assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED), f"{code} has no details"
        return f"{code.name} (client side)"
    size = len((error.details() or "").encode()) + sum(len(k) + len(v) for k, v in trailers)
    assert size < TRAILER_LIMIT, f"{code}: status of {size} bytes"
    status = status_pb2.Status.FromString(details)
    reasons = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert reasons, f"{code} without ErrorInfo"
    info = error_details_pb2.ErrorInfo()
    reasons[0].Unpack(info)
    # Every reason is one the proto declares, sent with the one code the router pairs it with; a retry
    # delay also travels as gRPC's own pushback.
    assert info.reason in error_reason_pb2.ErrorReason.DESCRIPTOR.values_by_name, info.reason
    assert to_status(RouterError(info.reason, "")).code == code, f"{info.reason} came with {code}"
    if any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details):
        assert PUSHBACK_KEY in dict(trailers), f"{code} {info.reason}: RetryInfo without pushback"
    return f"{code.name} {info.reason}"


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_no_request_breaks_the_router(channel, method):
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request_of(method.input_type, MODELS[method.name], max_repeated=6))
    def one(request) -> None:
        try:
            send(channel, method, request)
            outcome = "OK"
        except grpc.RpcError as error:
            outcome = check_status(error)
        OUTCOMES[method.name][outcome] += 1

    started = time.monotonic()
    one()
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING  # still up after all of it
    counts = OUTCOMES[method.name]
    print(f"{method.name}: {sum(counts.values())} requests in {time.monotonic() - started:.0f} s: {dict(counts)}")
    if REPORT:
        path = PROJECT_ROOT / REPORT
        report = json.loads(path.read_text()) if path.exists() else {}
        report[method.name] = {"requests": sum(counts.values()), "outcomes": dict(counts.most_common())}
        report["total_requests"] = sum(v["requests"] for k, v in report.items() if isinstance(v, dict))
        path.write_text(json.dumps(report, indent=2) + "\n")
