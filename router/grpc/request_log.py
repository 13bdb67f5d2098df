"""Each call's log context and its one `rpc` line, with its metrics: the request id (the caller's
`x-request-id`, or a new one), method, tenant and trace ids are bound to structlog's context for the call;
when it ends, one line says model, code, reason, latency, tokens, batches (the shards are added by the
core), and the request counters and histograms are updated. The request's text is never logged."""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog

from router.core.errors import RouterError
from router.grpc.caller import TENANT_KEY
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.server_span import record_status
from router.grpc.status import to_status
from router.observability import logs, metrics

log = structlog.get_logger("router.rpc")


def bind(metadata: dict, method: str) -> float:
    """Bind the call's log context; return when the call started."""
    return logs.bind_call(metadata.get(logs.REQUEST_ID_KEY), method, metadata.get(TENANT_KEY, ""))


def _encoder_usage(response) -> tuple[int, int | None] | None:
    return (response.usage.computed_tokens, response.usage.batches) if response.HasField("usage") else None


def _generation_usage(response: pb.GenerateResponse) -> tuple[int, int | None] | None:
    usage = response.usage
    return (usage.prompt_tokens + usage.completion_tokens, None) if response.HasField("usage") else None


def _stream_part_usage(response: pb.EmbedStreamResponse) -> tuple[int, int | None] | None:
    return _encoder_usage(response.response)


_USAGE = {
    pb.EmbedResponse: _encoder_usage,
    pb.RerankResponse: _encoder_usage,
    pb.GenerateResponse: _generation_usage,
    pb.EmbedStreamResponse: _stream_part_usage,
}
"""For each response type that reports usage: its tokens and batches (None: not counted in batches)."""


class Outcome:
    """What the call's line reports of its responses: the model, and tokens and batches summed over the
    responses that report usage (one for a unary call, the last for Generate, every part for EmbedStream)."""

    __slots__ = ("batches", "model", "tokens")

    def __init__(self, model: str) -> None:
        self.model = model
        self.tokens: int | None = None
        self.batches: int | None = None

    def add(self, response) -> None:
        counted = _USAGE.get(type(response))
        usage = counted(response) if counted is not None else None
        if usage is None:
            return
        if not self.model and isinstance(response, pb.EmbedStreamResponse):
            self.model = response.response.model
        tokens, batches = usage
        self.tokens = (self.tokens or 0) + tokens
        if batches is not None:
            self.batches = (self.batches or 0) + batches


def _code_of(error: BaseException | None) -> dict:
    if error is None:
        return {"code": "OK"}
    if isinstance(error, RouterError):
        return {"code": to_status(error).code.name, "reason": error.reason, "error": error.message}
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the caller went away
        return {"code": "CANCELLED"}
    if isinstance(error, grpc.aio.AbortError):
        return {"code": "ABORTED_BY_HANDLER"}
    return {"code": "INTERNAL"}  # its traceback is logged once, where the error is turned into a status


def finish(outcome: Outcome, started: float, method: str, error: BaseException | None, served: bool) -> None:
    """The call's line, its span's status and its metrics; `served`: whether its model is one the router
    serves (only those become metric labels, so a caller cannot grow the label set)."""
    fields: dict = {"model": outcome.model, **_code_of(error)}
    if outcome.tokens is not None:
        fields["tokens"] = outcome.tokens
    if outcome.batches is not None:
        fields["batches"] = outcome.batches
    record_status(fields["code"])
    elapsed = time.perf_counter() - started
    fields["ms"] = round(elapsed * 1000, 2)
    log.info("rpc", **fields)
    model = outcome.model if served else metrics.UNKNOWN_MODEL
    metrics.count_request(method, model, fields["code"], elapsed, outcome.tokens if fields["code"] == "OK" else None)
