"""One `rpc` log line per request, with the request's identity, outcome, work and the servers that did it,
and never the request's text (the session router runs in this process, so its lines are captured here)."""

from __future__ import annotations

import grpc
import pytest
import structlog
from structlog.testing import capture_logs

from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from tests.helpers import EMBED_MODEL, GENERATE_MODEL, wait_for

SECRET = "a sentence nobody should find in a log 7f3a"


def rpc_lines(logs: list[dict], request_id: str) -> list[dict]:
    return [line for line in logs if line["event"] == "rpc" and line.get("request_id") == request_id]


def test_one_line_per_request_with_its_work_and_shards(stub, triton):
    metadata = (("x-request-id", "log-test-embed"), ("x-tenant-id", "team-logs"))
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        reply = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=[SECRET, "two"]), metadata=metadata, timeout=30)
    [line] = rpc_lines(logs, "log-test-embed")
    assert line["method"] == "Embed" and line["tenant"] == "team-logs" and line["model"] == EMBED_MODEL
    assert line["code"] == "OK" and "reason" not in line
    assert line["tokens"] == reply.usage.computed_tokens and line["batches"] == reply.usage.batches
    assert line["shards"] == [triton.grpc_address]
    assert line["ms"] > 0
    assert SECRET not in repr(logs)


def test_a_refused_request_logs_its_code_and_reason(stub):
    metadata = (("x-request-id", "log-test-bad"),)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs, pytest.raises(grpc.RpcError):
        stub.Embed(pb.EmbedRequest(model="no-such-model", inputs=[SECRET]), metadata=metadata, timeout=30)
    [line] = rpc_lines(logs, "log-test-bad")
    assert line["code"] == "NOT_FOUND" and line["reason"] == "MODEL_NOT_FOUND"
    assert "shards" not in line  # nothing reached a server
    assert SECRET not in repr(logs)


def test_a_generate_stream_names_its_shard(stub, triton):
    served = lambda: GENERATE_MODEL in {m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}  # noqa: E731
    wait_for(served, "the router to serve the generation model")
    request = pb.GenerateRequest(model=GENERATE_MODEL, prompt="One, two,", max_tokens=4)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        last = list(stub.Generate(request, metadata=(("x-request-id", "log-test-gen"),), timeout=60))[-1]
        wait_for(lambda: rpc_lines(logs, "log-test-gen"), "the stream's line", 30)
    [line] = rpc_lines(logs, "log-test-gen")
    assert line["code"] == "OK" and line["shards"] == [triton.grpc_address]
    assert line["tokens"] == last.usage.prompt_tokens + last.usage.completion_tokens
