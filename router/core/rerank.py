"""Rerank: every document scored against the query, long ones window by window; a document's score is
its best window's. Windows of all documents go through the model's scheduler together, so a list of
thousands is packed by length into batches like any other work, and no document is ever dropped."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from router.core import errors
from router.core.accounting import timing_of, usage_of
from router.core.contract import Task, Truncation
from router.core.errors import FieldViolation
from router.core.registry import ModelRegistry
from router.core.types import NO_CALL_CONTEXT, CallContext, RankedDocument, RerankRequest, RerankResult
from router.core.validation import RequestLimits, check_count, check_positive, check_sizes, resolve_truncation


class RerankService:
    def __init__(self, registry: ModelRegistry, limits: RequestLimits) -> None:
        self.registry = registry
        self.limits = limits

    async def rerank(self, request: RerankRequest, call: CallContext = NO_CALL_CONTEXT) -> RerankResult:
        started = time.monotonic()
        served = self.registry.get(request.model, Task.RERANK)
        contract = served.contract
        if not request.query:
            raise errors.invalid(
                errors.EMPTY_QUERY, "query is empty", [FieldViolation("query", "give a non-empty query")]
            )
        check_count("documents", request.documents, self.limits, errors.EMPTY_DOCUMENTS)
        check_positive("top_n", request.top_n)
        check_positive("max_chunks_per_doc", request.max_chunks_per_doc)
        truncation = resolve_truncation(served, request.truncation)

        query = served.tokenizer.query(request.query, contract.max_query_tokens)
        if query.truncated and truncation is Truncation.NONE:
            raise errors.invalid(
                errors.QUERY_TOO_LONG,
                f"the query has {query.tokens} tokens; model {contract.name!r} takes at most "
                f"{contract.max_query_tokens} and truncation is NONE",
                [FieldViolation("query", f"has {query.tokens} tokens; at most {contract.max_query_tokens}")],
                model=contract.name,
                max_query_tokens=contract.max_query_tokens,
            )
        splits = await asyncio.to_thread(
            served.tokenizer.split_pairs,
            query,
            request.documents,
            contract.max_sequence_length,
            truncation,
            self.limits.chunk_overlap,
            request.max_chunks_per_doc,
        )
        tokens = check_sizes("documents", splits, self.limits, contract.max_sequence_length, contract.name)
        tokenized = time.monotonic()

        windows = [w for s in splits for w in s.windows]
        rows, ticket = await served.scheduler.run(windows, call.tenant, call.deadline)
        scores = rows.reshape(len(windows), -1)[:, 0].astype(np.float64)

        ranked: list[RankedDocument] = []
        start = 0
        for index, split in enumerate(splits):
            count = len(split.windows)
            best = start + int(np.argmax(scores[start : start + count]))
            window = windows[best]
            ranked.append(
                RankedDocument(
                    index=index,
                    score=float(scores[best]),
                    window_start=window.start,
                    window_end=window.end,
                    document=request.documents[index] if request.return_documents else None,
                )
            )
            start += count
        ranked.sort(key=lambda r: (-r.score, r.index))
        if request.top_n is not None:
            ranked = ranked[: request.top_n]

        return RerankResult(
            model=contract.name,
            results=ranked,
            query_truncated=query.truncated,
            usage=usage_of(splits, tokens, ticket),
            timing=timing_of(started, tokenized, ticket, time.monotonic()),
        )
