"""What a failed Triton call means for the batch, the shard and the caller.

Triton's gRPC status code says most of it: `NOT_FOUND` (no such model or version here),
`DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `CANCELLED` (the connection went away). Where one code covers
several cases its message tells them apart: Triton answers `UNAVAILABLE` both for a full queue ("Exceeds
maximum queue size") and for a model that is not ready or not loaded on this server, and older servers
answer an unknown model with `INVALID_ARGUMENT`; any other `UNAVAILABLE` is the server itself.
"""

from __future__ import annotations

import grpc
import structlog
from tritonclient.utils import InferenceServerException

from router.core import errors
from router.core.errors import RouterError

log = structlog.get_logger(__name__)

SERVER_DOWN_RETRY_S = 2.0
"""The least retry delay when no server that holds the model answers: a model server that went down
takes seconds to come back (2-3 s here for the smallest model loaded alone, 9 s seen on a busy CI
machine), and discovery sees it within a poll (1 s)."""
SERVER_DOWN_MAX_RETRY_S = 10.0
OVERLOADED_RETRY_S = 0.5

_NOT_HERE = ("unknown model", "is not ready", "not found")
"""How Triton's message says a model (or version) is not served by this server, under UNAVAILABLE or
(older servers) INVALID_ARGUMENT."""


def _code(error: InferenceServerException) -> grpc.StatusCode | None:
    name = str(error.status() or "").removeprefix("StatusCode.")
    return getattr(grpc.StatusCode, name, None)


class Failure:
    """A failed call, classified: whose fault it was, and whether another shard may run the batch."""

    def __init__(self, error: InferenceServerException) -> None:
        self.error = error
        self.code = _code(error)
        self.status = str(error.status() or "")
        message = (error.message() or "").lower()
        unavailable = self.code is grpc.StatusCode.UNAVAILABLE
        self.queue_full = unavailable and "queue" in message
        self.model_gone = self.code is grpc.StatusCode.NOT_FOUND or (
            self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT)
            and any(words in message for words in _NOT_HERE)
        )
        # Connection lost, server gone or shutting down: the shard's fault.
        self.shard_down = (unavailable or self.code is grpc.StatusCode.CANCELLED) and not (
            self.queue_full or self.model_gone
        )
        self.retryable = self.shard_down or self.queue_full or self.model_gone

    @property
    def outcome(self) -> str:
        """The label of the shard's batch counter when this failure is final."""
        return "failed" if self.shard_down else "error"

    def as_router_error(self, shard: str, model: str, down_retry_s: float) -> RouterError:
        """What the caller is told once no retry is left."""
        log.warning("triton.error", shard=shard, model=model, status=self.status, detail=self.error.message())
        if self.shard_down or self.model_gone:
            return RouterError(
                errors.BACKEND_UNAVAILABLE,
                "the model server is unavailable",
                retry_after_s=down_retry_s or SERVER_DOWN_RETRY_S,
            )
        if self.code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return RouterError(errors.BACKEND_DEADLINE, "the model server ran out of time")
        if self.queue_full or self.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return RouterError(
                errors.BACKEND_OVERLOADED, "the model server is overloaded", retry_after_s=OVERLOADED_RETRY_S
            )
        return RouterError(errors.BACKEND_FAILED, "the model server failed the request")


def down_retry_s(down_for_s: float) -> float:
    """The retry delay once the model's servers have been unreachable for `down_for_s`: as long again
    (an outage that has lasted a while is likely to last a while more), from SERVER_DOWN_RETRY_S up to
    SERVER_DOWN_MAX_RETRY_S. gRPC's retry policy makes five attempts at most; with delays of about 2, 2,
    4 and 8 s they span 16 s of outage."""
    return min(SERVER_DOWN_MAX_RETRY_S, max(SERVER_DOWN_RETRY_S, down_for_s))


def no_shard(model: str, down_retry: float) -> RouterError:
    return RouterError(
        errors.BACKEND_UNAVAILABLE,
        f"no model server that holds {model!r} is available",
        retry_after_s=down_retry,
        metadata={"model": model},
    )


def version_gone(model: str, version: str) -> RouterError:
    return RouterError(
        errors.MODEL_VERSION_GONE,
        f"version {version} of {model!r} is no longer on any model server",
        retry_after_s=1.0,
        metadata={"model": model},
    )


def deadline_passed() -> InferenceServerException:
    return InferenceServerException(
        "the caller's deadline passed before the model server answered", status="StatusCode.DEADLINE_EXCEEDED"
    )
