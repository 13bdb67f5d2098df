"""Helpers for tests: settings for a router in front of the session's Triton, google.rpc details."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from router.settings import PROJECT_ROOT, Settings

REPOSITORY = PROJECT_ROOT / "triton_models" / "repository"
EMBED_MODEL = "all-minilm-l6-v2"
RERANK_MODEL = "minilm-reranker"


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
