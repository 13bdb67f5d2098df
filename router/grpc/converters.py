"""All translation between modelrouter.v1 messages and the core's types lives here."""

from __future__ import annotations

import time
from contextvars import ContextVar

from google.protobuf import duration_pb2

from router.core import errors
from router.core.auth import NOBODY, Caller
from router.core.contract import ModelContract, Task, Truncation
from router.core.generate import Delta, Finished
from router.core.prompting import ChatMessage, GenerateRequest
from router.core.types import (
    CallContext,
    EmbedRequest,
    EmbedResult,
    RerankRequest,
    RerankResult,
    Timing,
    Usage,
)
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb

_TRUNCATION_FROM_PB = {
    pb.TRUNCATION_UNSPECIFIED: None,
    pb.TRUNCATION_CHUNK: Truncation.CHUNK,
    pb.TRUNCATION_END: Truncation.END,
    pb.TRUNCATION_START: Truncation.START,
    pb.TRUNCATION_NONE: Truncation.NONE,
}
_TRUNCATION_TO_PB = {value: key for key, value in _TRUNCATION_FROM_PB.items() if value is not None}
_TASK_TO_PB = {Task.EMBED: pb.TASK_EMBED, Task.RERANK: pb.TASK_RERANK, Task.GENERATE: pb.TASK_GENERATE}


TENANT_KEY = "x-tenant-id"


_caller: ContextVar[Caller | None] = ContextVar("caller", default=None)


def set_caller(caller: Caller) -> None:
    """The call's authenticated caller, for the handler's duration (the request interceptor sets it)."""
    _caller.set(caller)


def current_caller() -> Caller:
    """The call's caller; a handler reached without the interceptor is nobody (no models, no internals)."""
    return _caller.get() or Caller(NOBODY, "")


def call_context(context) -> CallContext:
    """The caller's tenant (authenticated by the interceptor) and deadline, from a grpc.aio context."""
    remaining = context.time_remaining()
    return CallContext(
        tenant=current_caller().tenant,
        deadline=None if remaining is None else time.monotonic() + remaining,
    )


def truncation_from_pb(value: int) -> Truncation | None:
    """None means UNSPECIFIED (the model's default); a value this build does not know is an error."""
    try:
        return _TRUNCATION_FROM_PB[value]
    except KeyError:
        raise errors.invalid(
            errors.UNSUPPORTED_OPTION,
            f"unknown truncation value {errors.echo(value)}",
            [errors.FieldViolation("truncation", "use a Truncation enum value")],
        ) from None


def embed_request_from_pb(request: pb.EmbedRequest) -> EmbedRequest:
    return EmbedRequest(
        model=request.model,
        inputs=list(request.inputs),
        truncation=truncation_from_pb(request.truncation),
        normalize=request.normalize if request.HasField("normalize") else None,
        dimensions=request.dimensions if request.HasField("dimensions") else None,
    )


def rerank_request_from_pb(request: pb.RerankRequest) -> RerankRequest:
    return RerankRequest(
        model=request.model,
        query=request.query,
        documents=list(request.documents),
        top_n=request.top_n if request.HasField("top_n") else None,
        return_documents=request.return_documents,
        truncation=truncation_from_pb(request.truncation),
        max_chunks_per_doc=request.max_chunks_per_doc if request.HasField("max_chunks_per_doc") else None,
    )


def rerank_response_to_pb(result: RerankResult) -> pb.RerankResponse:
    return pb.RerankResponse(
        model=result.model,
        results=[
            pb.RerankResult(
                index=r.index,
                score=r.score,
                document=r.document,
                best_window_start=r.window_start,
                best_window_end=r.window_end,
            )
            for r in result.results
        ],
        usage=usage_to_pb(result.usage),
        timing=timing_to_pb(result.timing),
        query_truncated=result.query_truncated,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def usage_to_pb(usage: Usage) -> pb.Usage:
    return pb.Usage(
        input_tokens=usage.input_tokens,
        computed_tokens=usage.computed_tokens,
        sequences=usage.sequences,
        batches=usage.batches,
        inputs_truncated=usage.inputs_truncated,
        inputs_chunked=usage.inputs_chunked,
        padded_tokens=usage.padded_tokens,
        cached_sequences=usage.cached_sequences,
    )


def timing_to_pb(timing: Timing) -> pb.Timing:
    return pb.Timing(
        tokenize=_duration(timing.tokenize),
        queue=_duration(timing.queue),
        inference=_duration(timing.inference),
        total=_duration(timing.total),
    )


def embed_response_to_pb(result: EmbedResult) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        model=result.model,
        embeddings=[pb.Embedding(values=row) for row in result.embeddings.tolist()],
        usage=usage_to_pb(result.usage),
        timing=timing_to_pb(result.timing),
    )


def model_info_to_pb(contract: ModelContract, served_by: tuple[str, ...] = ()) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=contract.name,
        version=contract.version,
        task=_TASK_TO_PB[contract.task],
        max_sequence_length=contract.max_sequence_length,
        max_batch_size=contract.max_batch_size,
        embedding_dimensions=contract.embedding_dimensions if contract.task is Task.EMBED else 0,
        normalize=contract.normalize if contract.task is Task.EMBED else False,
        default_truncation=_TRUNCATION_TO_PB[contract.default_truncation],
        supported_truncations=sorted(_TRUNCATION_TO_PB[t] for t in contract.truncations),
        supported_dimensions=list(contract.dimensions),
        pooling=contract.pooling,
        served_by=list(served_by),
        max_query_tokens=contract.max_query_tokens if contract.task is Task.RERANK else 0,
        generate_options=sorted(contract.generate_options),
    )


_FINISH_TO_PB = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "cancelled": pb.FINISH_REASON_CANCELLED,
}


def _optional(message, name: str):
    return getattr(message, name) if message.HasField(name) else None


def generate_request_from_pb(request: pb.GenerateRequest) -> GenerateRequest:
    return GenerateRequest(
        model=request.model,
        prompt=request.prompt,
        messages=tuple(ChatMessage(m.role, m.content) for m in request.messages),
        max_tokens=_optional(request, "max_tokens"),
        temperature=_optional(request, "temperature"),
        top_p=_optional(request, "top_p"),
        top_k=_optional(request, "top_k"),
        seed=_optional(request, "seed"),
        stop=tuple(request.stop),
        repetition_penalty=_optional(request, "repetition_penalty"),
        presence_penalty=_optional(request, "presence_penalty"),
        frequency_penalty=_optional(request, "frequency_penalty"),
        truncation=truncation_from_pb(request.truncation),
    )


def generate_event_to_pb(event: Delta | Finished) -> pb.GenerateResponse:
    if isinstance(event, Delta):
        return pb.GenerateResponse(text=event.text, model_version=event.model_version)
    timing = pb.GenerationTiming(total=_duration(event.total_s), queue=_duration(event.queue_s))
    if event.time_to_first_token_s is not None:
        timing.time_to_first_token.CopyFrom(_duration(event.time_to_first_token_s))
    return pb.GenerateResponse(
        finish_reason=_FINISH_TO_PB[event.reason],
        stop=event.stop or "",
        model_version=event.model_version,
        usage=pb.GenerationUsage(
            prompt_tokens=event.prompt_tokens,
            completion_tokens=event.completion_tokens,
            prompt_tokens_dropped=event.dropped_tokens,
            messages_dropped=event.dropped_messages,
        ),
        timing=timing,
    )
