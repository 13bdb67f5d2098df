"""The router's Prometheus metrics move by the right amounts (the session router runs in this process, so
its registry is read directly; `metrics_port` serves the same registry)."""

from __future__ import annotations

import uuid

import grpc
import pytest
from prometheus_client import REGISTRY

from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from tests.helpers import EMBED_MODEL, wait_for


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_tokens_latency_and_triton_calls_are_counted(stub, triton):
    requests = "modelrouter_requests_total"
    ok = {"method": "Embed", "model": EMBED_MODEL, "code": "OK"}
    bad = {"method": "Embed", "model": EMBED_MODEL, "code": "INVALID_ARGUMENT"}
    unknown = {"method": "Embed", "model": "(unknown)", "code": "NOT_FOUND"}
    unknown_bad = {"method": "Embed", "model": "(unknown)", "code": "INVALID_ARGUMENT"}
    per_model = {"method": "Embed", "model": EMBED_MODEL}
    shard = {"shard": triton.grpc_address, "outcome": "ok"}
    before = {
        "ok": value(requests, **ok),
        "bad": value(requests, **bad),
        "unknown": value(requests, **unknown),
        "unknown_bad": value(requests, **unknown_bad),
        "tokens": value("modelrouter_request_tokens_total", **per_model),
        "latencies": value("modelrouter_request_duration_seconds_count", **per_model),
        "triton": value("modelrouter_triton_call_duration_seconds_count", **shard),
    }
    computed, batches = 0, 0
    for i in range(3):
        reply = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=[f"metrics text {i}", "and one more"]), timeout=30)
        computed += reply.usage.computed_tokens
        batches += reply.usage.batches
    with pytest.raises(grpc.RpcError):
        stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=[]), timeout=30)
    made_up = f"made-up-{uuid.uuid4().hex}"
    with pytest.raises(grpc.RpcError):
        stub.Embed(pb.EmbedRequest(model=made_up, inputs=["x"]), timeout=30)

    with pytest.raises(grpc.RpcError):  # refused for another reason, still not a model the router serves
        stub.Embed(pb.EmbedRequest(model=made_up + "-2", inputs=["x"], truncation=99), timeout=30)

    assert value(requests, **ok) == before["ok"] + 3
    assert value(requests, **bad) == before["bad"] + 1
    assert value(requests, **unknown) == before["unknown"] + 1
    assert value(requests, **unknown_bad) == before["unknown_bad"] + 1
    assert value("modelrouter_request_tokens_total", **per_model) == before["tokens"] + computed
    assert (
        value("modelrouter_request_duration_seconds_count", **per_model) == before["latencies"] + 4
    )  # not the made-up ones
    # Batches may serve several requests at once, but these calls came one after another.
    assert value("modelrouter_triton_call_duration_seconds_count", **shard) >= before["triton"] + batches
    names = {sample.labels.get("model") for metric in REGISTRY.collect() for sample in metric.samples}
    assert made_up not in names and made_up + "-2" not in names  # a caller cannot grow the label set


def test_generation_streams_are_counted_when_they_end(stub):
    from tests.helpers import GENERATE_MODEL

    served = lambda: GENERATE_MODEL in {m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}  # noqa: E731
    wait_for(served, "the router to serve the generation model")
    labels = {"method": "Generate", "model": GENERATE_MODEL, "code": "OK"}
    before = value("modelrouter_requests_total", **labels)
    tokens_before = value("modelrouter_request_tokens_total", method="Generate", model=GENERATE_MODEL)
    request = pb.GenerateRequest(model=GENERATE_MODEL, prompt="One, two,", max_tokens=5)
    last = list(stub.Generate(request, timeout=60))[-1]
    wait_for(lambda: value("modelrouter_requests_total", **labels) == before + 1, "the stream to be counted", 30)
    used = last.usage.prompt_tokens + last.usage.completion_tokens
    assert value("modelrouter_request_tokens_total", method="Generate", model=GENERATE_MODEL) == tokens_before + used
