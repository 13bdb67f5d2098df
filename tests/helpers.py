"""Helpers for tests: settings for a router in front of the session's Triton, google.rpc details."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from router.settings import PROJECT_ROOT, Settings

REPOSITORY = PROJECT_ROOT / "triton_models" / "repository"
EMBED_MODEL = "all-minilm-l6-v2"
RERANK_MODEL = "minilm-reranker"
GENERATE_MODEL = "smollm2-135m-instruct"
LLM_RERANK_MODEL = "smollm2-reranker"


def router_settings(triton, **overrides) -> Settings:
    """Settings for a router on a free loopback port in front of the given (embedded) Triton."""
    overrides.setdefault("model_repository", REPOSITORY)
    return Settings(host="127.0.0.1", port=0, triton=[triton.grpc_address], **overrides)


class RpcErrorDetails:
    """The google.rpc details of a failed call."""

    def __init__(self, error: grpc.RpcError) -> None:
        self.code = error.code()
        status = rpc_status.from_call(error)
        assert status is not None, "the error carries no google.rpc.Status details"
        self.info = error_details_pb2.ErrorInfo()
        self.bad_request = error_details_pb2.BadRequest()
        self.retry = error_details_pb2.RetryInfo()
        self.kinds: set[str] = set()
        for detail in status.details:
            for name, message in (("info", self.info), ("bad_request", self.bad_request), ("retry", self.retry)):
                if detail.Is(message.DESCRIPTOR):
                    detail.Unpack(message)
                    self.kinds.add(name)

    @property
    def fields(self) -> dict[str, str]:
        return {v.field: v.description for v in self.bad_request.field_violations}


def details_of(error: grpc.RpcError) -> RpcErrorDetails:
    return RpcErrorDetails(error)


def wait_for(condition, what: str, timeout_s: float = 120.0) -> float:
    """Poll `condition` until true; return how long that took. A generous bound, only against a hang."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"gave up waiting: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


@contextlib.contextmanager
def running_triton(repository, log_path, models: list[str]):
    """An embedded tritonserver over `repository`, once these models are ready."""
    import tritonclient.grpc as triton_grpc

    from adapters.triton.embedded import EmbeddedTriton

    server = EmbeddedTriton(repository, log_path=log_path)
    server.start()
    try:
        server.wait_ready()
        client = triton_grpc.InferenceServerClient(server.grpc_address)
        deadline = time.monotonic() + 120
        while not all(client.is_model_ready(model) for model in models):
            assert time.monotonic() < deadline, f"models never became ready; see {log_path}"
            time.sleep(0.2)
        client.close()
        yield server
    finally:
        server.stop()


def executions(address: str) -> dict[str, int]:
    """Triton's own count of batches each model executed (its inference statistics)."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(address)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    return {s["name"]: int(s.get("execution_count", 0)) for s in stats.get("model_stats", [])}


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes in a process group, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members
