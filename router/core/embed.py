"""Embed: validate against the model's contract, tokenize, cut, schedule, combine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from router.core import errors
from router.core.contract import Task, Truncation
from router.core.errors import FieldViolation
from router.core.pooling import combine_windows, l2_normalize
from router.core.registry import ModelRegistry, ServedModel
from router.core.tokenize import Split
from router.core.types import EmbedRequest, EmbedResult, Timing, Usage

# Field violations listed in one error; the rest are counted in the message.
MAX_VIOLATIONS = 20


@dataclass(frozen=True)
class RequestLimits:
    max_inputs: int = 10_000
    """Inputs (Embed) or documents (Rerank) in one request."""
    max_tokens: int = 2_000_000
    """Tokens in one request, counted before truncation."""
    chunk_overlap: int = 32
    """Tokens shared by consecutive windows of a chunked input."""


def resolve_truncation(served: ServedModel, requested: Truncation | None) -> Truncation:
    truncation = requested or served.contract.default_truncation
    if truncation not in served.contract.truncations:
        allowed = ", ".join(sorted(t.value for t in served.contract.truncations))
        raise errors.invalid(
            errors.UNSUPPORTED_OPTION,
            f"model {served.contract.name!r} does not support truncation {truncation.value}",
            [FieldViolation("truncation", f"supported: {allowed}")],
        )
    return truncation


def check_sizes(field_name: str, splits: list[Split], limits: RequestLimits, max_len: int, model: str) -> int:
    """Reject inputs left too long (truncation NONE) and requests over the token cap; return tokens."""
    too_long = [(i, s.tokens) for i, s in enumerate(splits) if s.too_long]
    if too_long:
        violations = [
            FieldViolation(f"{field_name}[{i}]", f"has {n} tokens; model {model!r} accepts at most {max_len}")
            for i, n in too_long[:MAX_VIOLATIONS]
        ]
        raise errors.invalid(
            errors.INPUT_TOO_LONG,
            f"{len(too_long)} of {len(splits)} {field_name} exceed {max_len} tokens and truncation is NONE",
            violations,
            model=model,
            max_sequence_length=max_len,
            too_long=len(too_long),
        )
    tokens = sum(s.tokens for s in splits)
    if tokens > limits.max_tokens:
        raise errors.invalid(
            errors.TOO_MANY_TOKENS,
            f"the request holds {tokens} tokens; the limit is {limits.max_tokens}",
            [FieldViolation(field_name, f"at most {limits.max_tokens} tokens in all; split the request")],
            tokens=tokens,
            max_tokens=limits.max_tokens,
        )
    return tokens


class EmbedService:
    def __init__(self, registry: ModelRegistry, limits: RequestLimits) -> None:
        self.registry = registry
        self.limits = limits

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        started = time.monotonic()
        served = self.registry.get(request.model, Task.EMBED)
        contract = served.contract
        self._validate(request, served)
        truncation = resolve_truncation(served, request.truncation)

        splits = await asyncio.to_thread(
            served.tokenizer.split,
            request.inputs,
            contract.max_sequence_length,
            truncation,
            self.limits.chunk_overlap,
        )
        tokens = check_sizes("inputs", splits, self.limits, contract.max_sequence_length, contract.name)
        tokenized = time.monotonic()

        windows = [w for s in splits for w in s.windows]
        rows, ticket = await served.scheduler.run(windows)

        vectors = np.empty((len(splits), rows.shape[1]), dtype=np.float32)
        start = 0
        for i, split in enumerate(splits):
            count = len(split.windows)
            vectors[i] = combine_windows(rows[start : start + count], [w.length for w in split.windows])
            start += count
        if request.dimensions is not None:
            vectors = vectors[:, : request.dimensions]
        normalize = contract.normalize if request.normalize is None else request.normalize
        if normalize:
            vectors = l2_normalize(vectors)

        finished = time.monotonic()
        dispatched = ticket.first_dispatch or tokenized
        return EmbedResult(
            model=contract.name,
            embeddings=vectors,
            usage=Usage(
                input_tokens=tokens,
                computed_tokens=sum(w.length for w in windows),
                sequences=len(windows),
                batches=len(ticket.batches),
                inputs_truncated=sum(1 for s in splits if s.truncated),
                inputs_chunked=sum(1 for s in splits if s.chunked),
            ),
            timing=Timing(
                tokenize=tokenized - started,
                queue=dispatched - tokenized,
                inference=(ticket.finished or finished) - dispatched,
                total=finished - started,
            ),
        )

    def _validate(self, request: EmbedRequest, served: ServedModel) -> None:
        if not request.inputs:
            raise errors.invalid(
                errors.EMPTY_INPUTS, "inputs is empty", [FieldViolation("inputs", "give at least one input")]
            )
        if len(request.inputs) > self.limits.max_inputs:
            raise errors.invalid(
                errors.TOO_MANY_INPUTS,
                f"{len(request.inputs)} inputs; the limit is {self.limits.max_inputs}",
                [FieldViolation("inputs", f"at most {self.limits.max_inputs} inputs per request")],
                inputs=len(request.inputs),
                max_inputs=self.limits.max_inputs,
            )
        if request.dimensions is not None:
            full = served.contract.embedding_dimensions
            allowed = set(served.contract.dimensions) | {full}
            if request.dimensions not in allowed:
                raise errors.invalid(
                    errors.UNSUPPORTED_OPTION,
                    f"model {served.contract.name!r} cannot return {request.dimensions} dimensions",
                    [FieldViolation("dimensions", f"supported: {sorted(allowed)}")],
                )
