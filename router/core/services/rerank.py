"""Rerank: every document scored against the query, long ones window by window; a document's score is
its best window's. Windows of all documents go through the model's scheduler together, so a list of
thousands is packed by length into batches like any other work, and no document is ever dropped."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from router.core import errors
from router.core.config import RequestLimits
from router.core.errors import FieldViolation
from router.core.models.contract import Task, Truncation
from router.core.models.registry import ServedModel
from router.core.services.pipeline import RequestPipeline
from router.core.services.types import NO_CALL_CONTEXT, CallContext, RankedDocument, RerankRequest, RerankResult
from router.core.services.validation import check_count, check_positive, resolve_truncation
from router.core.text.windows import Query, Split


@dataclass
class _RerankJob:
    request: RerankRequest
    field: str = "documents"
    query_truncated: bool = False
    query: Query | None = None
    """The query, tokenized once for all parts of the documents."""

    def validate(self, served: ServedModel, limits: RequestLimits) -> None:
        request = self.request
        if not request.query:
            raise errors.invalid(
                errors.EMPTY_QUERY, "query is empty", [FieldViolation("query", "give a non-empty query")]
            )
        check_count("documents", request.documents, limits, errors.EMPTY_DOCUMENTS)
        check_positive("top_n", request.top_n)
        check_positive("max_chunks_per_doc", request.max_chunks_per_doc)
        self.truncation = resolve_truncation(served, request.truncation)

    def size(self) -> int:
        return len(self.request.query) + sum(len(d) for d in self.request.documents)

    def count(self) -> int:
        return len(self.request.documents)

    def tokenize(self, served: ServedModel, limits: RequestLimits, part: slice) -> list[Split]:
        contract, request = served.contract, self.request
        query = self.query = self.query or served.tokenizer.query(request.query, contract.max_query_tokens)
        if query.truncated and self.truncation is Truncation.NONE:
            raise errors.invalid(
                errors.QUERY_TOO_LONG,
                f"the query has {query.tokens} tokens; model {contract.name!r} takes at most "
                f"{contract.max_query_tokens} and truncation is NONE",
                [FieldViolation("query", f"has {query.tokens} tokens; at most {contract.max_query_tokens}")],
                model=contract.name,
                max_query_tokens=contract.max_query_tokens,
            )
        self.query_truncated = query.truncated
        return served.tokenizer.split_pairs(
            query,
            request.documents[part],
            contract.max_sequence_length,
            self.truncation,
            limits.chunk_overlap,
            request.max_chunks_per_doc,
            contract.pair_template,
        )


class RerankService:
    def __init__(self, pipeline: RequestPipeline) -> None:
        self.pipeline = pipeline

    async def rerank(self, request: RerankRequest, call: CallContext = NO_CALL_CONTEXT) -> RerankResult:
        job = _RerankJob(request)
        done = await self.pipeline.run(request.model, Task.RERANK, call, job, request.version)
        combined = time.monotonic()
        contract = done.served.contract
        scores = done.rows.reshape(len(done.windows), -1)[:, contract.score_column].astype(np.float64)
        ranked: list[RankedDocument] = []
        for index, ((start, end), usage) in enumerate(zip(done.per_split(), done.inputs(), strict=True)):
            best = start + int(np.argmax(scores[start:end]))
            window = done.windows[best]
            ranked.append(
                RankedDocument(
                    index=index,
                    score=float(scores[best]),
                    window_start=window.start,
                    window_end=window.end,
                    document=request.documents[index] if request.return_documents else None,
                    usage=usage,
                )
            )
        ranked.sort(key=lambda r: (-r.score, r.index))
        if request.top_n is not None:
            ranked = ranked[: request.top_n]
        ranked = [_with_utf8_offsets(r, request.documents[r.index]) for r in ranked]
        done.timing.total += time.monotonic() - combined
        return RerankResult(
            model=contract.name,
            results=ranked,
            query_truncated=job.query_truncated,
            usage=done.usage,
            timing=done.timing,
            version=done.version,
        )


def _with_utf8_offsets(ranked: RankedDocument, document: str) -> RankedDocument:
    """The best window's offsets in UTF-8 bytes too (only for the results returned). ASCII text, the
    common case, needs no encoding: its code points are its bytes."""
    if document.isascii():
        start, end = ranked.window_start, ranked.window_end
    else:
        start = len(document[: ranked.window_start].encode("utf-8", "surrogatepass"))
        end = start + len(document[ranked.window_start : ranked.window_end].encode("utf-8", "surrogatepass"))
    return dataclasses.replace(ranked, window_start_utf8=start, window_end_utf8=end)
