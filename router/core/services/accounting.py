"""Usage and timing of one request, from its splits and its scheduler ticket; what its log line adds."""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from router.core.scheduling.work import Ticket
from router.core.services.types import Timing, Usage
from router.core.text.windows import Split


def usage_of(splits: list[Split], input_tokens: int, ticket: Ticket) -> Usage:
    return Usage(
        input_tokens=input_tokens,
        computed_tokens=ticket.computed_tokens,
        sequences=sum(len(s.windows) for s in splits),
        batches=len(ticket.batches),
        inputs_truncated=sum(1 for s in splits if s.truncated),
        inputs_chunked=sum(1 for s in splits if s.chunked),
        padded_tokens=ticket.padded_tokens,
        cached_sequences=ticket.cache_hits,
    )


def timing_of(started: float, tokenized: float, ticket: Ticket, finished: float) -> Timing:
    dispatched = ticket.first_dispatch or tokenized
    return Timing(
        tokenize=tokenized - started,
        queue=dispatched - tokenized,
        inference=(ticket.finished or finished) - dispatched,
        total=finished - started,
    )


def log_shards(shards: Iterable[str]) -> None:
    """Name the servers that answered the request in its log line (the `rpc` line, written as it ends)."""
    structlog.contextvars.bind_contextvars(shards=sorted(s for s in shards if s))
