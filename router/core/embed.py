"""Embed: validate against the model's contract, tokenize, cut, schedule, combine."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from router.core import errors
from router.core.accounting import timing_of, usage_of
from router.core.contract import Task
from router.core.errors import FieldViolation
from router.core.pooling import combine_windows, l2_normalize
from router.core.registry import ModelRegistry, ServedModel
from router.core.types import NO_CALL_CONTEXT, CallContext, EmbedRequest, EmbedResult
from router.core.validation import RequestLimits, check_count, check_sizes, resolve_truncation


class EmbedService:
    def __init__(self, registry: ModelRegistry, limits: RequestLimits) -> None:
        self.registry = registry
        self.limits = limits

    async def embed(self, request: EmbedRequest, call: CallContext = NO_CALL_CONTEXT) -> EmbedResult:
        started = time.monotonic()
        served = self.registry.get(request.model, Task.EMBED)
        contract = served.contract
        check_count("inputs", request.inputs, self.limits, errors.EMPTY_INPUTS)
        self._check_dimensions(request, served)
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

        rows, ticket = await served.scheduler.run([w for s in splits for w in s.windows], call.tenant, call.deadline)

        vectors = np.empty((len(splits), rows.shape[1]), dtype=np.float32)
        start = 0
        for i, split in enumerate(splits):
            count = len(split.windows)
            vectors[i] = combine_windows(rows[start : start + count], [w.length for w in split.windows])
            start += count
        if request.dimensions is not None:
            vectors = vectors[:, : request.dimensions]
        if contract.normalize if request.normalize is None else request.normalize:
            vectors = l2_normalize(vectors)

        return EmbedResult(
            model=contract.name,
            embeddings=vectors,
            usage=usage_of(splits, tokens, ticket),
            timing=timing_of(started, tokenized, ticket, time.monotonic()),
        )

    @staticmethod
    def _check_dimensions(request: EmbedRequest, served: ServedModel) -> None:
        if request.dimensions is None:
            return
        full = served.contract.embedding_dimensions
        allowed = set(served.contract.dimensions) | {full}
        if request.dimensions not in allowed:
            raise errors.invalid(
                errors.UNSUPPORTED_OPTION,
                f"model {served.contract.name!r} cannot return {request.dimensions} dimensions",
                [FieldViolation("dimensions", f"supported: {sorted(allowed)}")],
            )
