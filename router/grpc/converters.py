"""All translation between modelrouter.v1 messages and the core's types lives here."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from google.protobuf import duration_pb2

from router.core import errors
from router.core.criticality import Criticality
from router.core.models.contract import Task, Truncation
from router.core.models.registry import ServedModel
from router.core.services.generate import Delta, Finished
from router.core.services.types import (
    ChatMessage,
    EmbedRequest,
    GenerateRequest,
    InputUsage,
    RerankRequest,
    RerankResult,
    Timing,
    Usage,
)
from router.core.text.quantize import Encoding
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
_TASK_FROM_PB = {value: key for key, value in _TASK_TO_PB.items()}
_ENCODING_FROM_PB = {
    pb.ENCODING_UNSPECIFIED: Encoding.FLOAT,
    pb.ENCODING_FLOAT: Encoding.FLOAT,
    pb.ENCODING_FLOAT32_BYTES: Encoding.FLOAT32_BYTES,
    pb.ENCODING_INT8: Encoding.INT8,
    pb.ENCODING_UINT8: Encoding.UINT8,
    pb.ENCODING_BINARY: Encoding.BINARY,
    pb.ENCODING_UBINARY: Encoding.UBINARY,
}
ENCODING_TO_PB = {value: key for key, value in _ENCODING_FROM_PB.items() if key != pb.ENCODING_UNSPECIFIED}
_INPUT_TYPE_FROM_PB = {
    pb.INPUT_TYPE_UNSPECIFIED: None,
    pb.INPUT_TYPE_QUERY: "query",
    pb.INPUT_TYPE_DOCUMENT: "document",
    pb.INPUT_TYPE_CLASSIFICATION: "classification",
    pb.INPUT_TYPE_CLUSTERING: "clustering",
}
_INPUT_TYPE_TO_PB = {value: key for key, value in _INPUT_TYPE_FROM_PB.items() if value is not None}
_CRITICALITY_FROM_PB = {
    pb.CRITICALITY_UNSPECIFIED: Criticality.DEFAULT,
    pb.CRITICALITY_CRITICAL: Criticality.CRITICAL,
    pb.CRITICALITY_DEFAULT: Criticality.DEFAULT,
    pb.CRITICALITY_SHEDDABLE: Criticality.SHEDDABLE,
}
_SCORE_TYPE_TO_PB = {
    "logit": pb.SCORE_TYPE_LOGIT,
    "probability": pb.SCORE_TYPE_PROBABILITY,
    "similarity": pb.SCORE_TYPE_SIMILARITY,
}


def _enum(table: dict, value: int, field: str, enum_name: str):
    """An enum value this build knows, else UNSUPPORTED_OPTION naming the field (proto3 keeps unknown
    numbers a newer client sends)."""
    try:
        return table[value]
    except KeyError:
        raise errors.invalid(
            errors.UNSUPPORTED_OPTION,
            f"unknown {field} value {errors.echo(value)}",
            [errors.FieldViolation(field, f"use a {enum_name} enum value")],
        ) from None


def truncation_from_pb(value: int) -> Truncation | None:
    """None means UNSPECIFIED (the model's default); a value this build does not know is an error."""
    return _enum(_TRUNCATION_FROM_PB, value, "truncation", "Truncation")


def criticality_from_pb(value: int) -> Criticality:
    return _enum(_CRITICALITY_FROM_PB, value, "criticality", "Criticality")


def task_from_pb(value: int) -> Task | None:
    """None means UNSPECIFIED (every task)."""
    return None if value == pb.TASK_UNSPECIFIED else _enum(_TASK_FROM_PB, value, "task", "Task")


def embed_request_from_pb(request: pb.EmbedRequest) -> EmbedRequest:
    return EmbedRequest(
        model=request.model,
        inputs=list(request.inputs),
        truncation=truncation_from_pb(request.truncation),
        normalize=request.normalize if request.HasField("normalize") else None,
        dimensions=request.dimensions if request.HasField("dimensions") else None,
        encoding=_enum(_ENCODING_FROM_PB, request.encoding, "encoding", "Encoding"),
        input_type=_enum(_INPUT_TYPE_FROM_PB, request.input_type, "input_type", "InputType"),
        version=request.model_version,
    )


async def embed_parts_from_pb(messages) -> AsyncIterator[EmbedRequest]:
    """An EmbedStream's parts: the first sets the model and options, later ones carry only inputs (any
    other field set there is refused, naming it). A part that did not parse is MALFORMED_REQUEST."""
    first: EmbedRequest | None = None
    number = 0
    async for message in messages:
        if not isinstance(message, pb.EmbedStreamRequest):  # the tolerant deserializer's stand-in
            raise errors.invalid(errors.MALFORMED_REQUEST, f"part {number} is not a valid EmbedStreamRequest")
        request = message.request
        if not request.inputs:
            raise errors.invalid(
                errors.EMPTY_INPUTS,
                f"part {number} has no inputs",
                [errors.FieldViolation(f"part[{number}].request.inputs", "send at least one input per part")],
            )
        if first is None:
            first = embed_request_from_pb(request)
            yield first
        else:
            extra = [field.name for field, _ in request.ListFields() if field.name != "inputs"]
            if extra:
                raise errors.invalid(
                    errors.INVALID_VALUE,
                    f"part {number} sets {', '.join(extra)}; only the first part sets the model and options",
                    [
                        errors.FieldViolation(f"part[{number}].request.{name}", "set it on the first part only")
                        for name in extra
                    ],
                )
            yield dataclasses.replace(first, inputs=list(request.inputs))
        number += 1


def rerank_request_from_pb(request: pb.RerankRequest) -> RerankRequest:
    return RerankRequest(
        model=request.model,
        query=request.query,
        documents=list(request.documents),
        top_n=request.top_n if request.HasField("top_n") else None,
        return_documents=request.return_documents,
        truncation=truncation_from_pb(request.truncation),
        max_chunks_per_doc=request.max_chunks_per_doc if request.HasField("max_chunks_per_doc") else None,
        version=request.model_version,
    )


def input_usage_to_pb(usage: InputUsage | None) -> pb.InputUsage | None:
    if usage is None:
        return None
    return pb.InputUsage(tokens=usage.tokens, truncated=usage.truncated, windows=usage.windows)


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
                usage=input_usage_to_pb(r.usage),
                best_window_start_utf8=r.window_start_utf8,
                best_window_end_utf8=r.window_end_utf8,
            )
            for r in result.results
        ],
        usage=usage_to_pb(result.usage),
        timing=timing_to_pb(result.timing),
        query_truncated=result.query_truncated,
        model_version=result.version,
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


def model_info_to_pb(served: ServedModel, internals: bool = False) -> pb.ModelInfo:
    """A model's contract as callers see it; `internals` (an admin's): the servers that hold it."""
    contract = served.contract
    embed = contract.task is Task.EMBED
    return pb.ModelInfo(
        name=contract.name,
        version=contract.version,
        task=_TASK_TO_PB[contract.task],
        max_sequence_length=contract.max_sequence_length,
        max_batch_size=contract.max_batch_size,
        embedding_dimensions=contract.embedding_dimensions if embed else 0,
        normalize=contract.normalize if embed else False,
        default_truncation=_TRUNCATION_TO_PB[contract.default_truncation],
        supported_truncations=sorted(_TRUNCATION_TO_PB[t] for t in contract.truncations),
        supported_dimensions=list(contract.dimensions),
        pooling=contract.pooling,
        served_by=list(served.served_by) if internals else [],
        max_query_tokens=contract.max_query_tokens if contract.task is Task.RERANK else 0,
        generate_options=sorted(contract.generate_options),
        versions=list(served.versions or (contract.version,)),
        score_type=_SCORE_TYPE_TO_PB[contract.score_type]
        if contract.task is Task.RERANK
        else pb.SCORE_TYPE_UNSPECIFIED,
        input_types=sorted(_INPUT_TYPE_TO_PB[name] for name, _ in contract.input_prefixes) if embed else [],
        quantization_range=contract.quantization_range if embed else 0.0,
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
