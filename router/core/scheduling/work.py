"""What a model's scheduler holds: a ticket per request, an item per sequence of it.

A request's rows are delivered into its ticket (`outputs`, by the sequence's place in the request) and the
ticket's one future resolves when the last arrives, or fails with the first error: one future per request,
whatever its number of sequences."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry.trace import SpanContext

from router.core.criticality import Criticality
from router.core.text.windows import Window
from router.observability import tracing


@dataclass(eq=False)
class Ticket:
    """One request's passage through a scheduler (compared by identity)."""

    submitted: float
    """time.monotonic() when the request reached the scheduler."""
    tenant: str = ""
    deadline: float | None = None
    """time.monotonic() by which the caller stops waiting."""
    criticality: Criticality = Criticality.DEFAULT
    """Critical work is served first, sheddable work last (fair_queue.py) and refused first (admission.py)."""
    first_dispatch: float | None = None
    finished: float | None = None
    batches: set[int] = field(default_factory=set)
    shards: set[str] = field(default_factory=set)
    """The servers that answered its batches (for its log line)."""
    padded_tokens: int = 0
    """Each of the request's rows costs its batch's longest row."""
    computed_tokens: int = 0
    """Tokens of the request's sequences sent to the model (cache hits are not)."""
    cache_hits: int = 0
    estimate: float | None = None
    """Seconds the drain rate said the request would take, when it was admitted."""
    queued: int = 0
    """Tokens of the request still waiting in the queue."""
    served: int = 0
    """Tokens dispatched for the request since it joined."""
    start: float = 0.0
    """Its tenant's request clock when it joined (fair_queue.py)."""
    span: SpanContext | None = None
    """The request's span (tracing.py), when it is traced: its batches link to it."""
    arrived_ns: int = 0
    first_dispatch_ns: int | None = None
    """Wall-clock arrival and first batch, for the request's queue span."""
    pinned: bool = False
    """The caller named the model version: its work is never handed to the next version."""
    handed_to: str | None = None
    """The version that finished some of its work when its own was unloaded mid-request."""
    outputs: list = field(default_factory=list)
    """The request's output rows by the place of their sequence (None until delivered)."""
    pending: int = 0
    """Rows still to be delivered."""
    done: asyncio.Future | None = None
    """Resolves when the last row is delivered, or fails with the first error."""

    def deliver(self, index: int, row: object) -> None:
        self.outputs[index] = row
        self.pending -= 1
        if not self.pending and self.done is not None and not self.done.done():
            self.done.set_result(None)

    def fail(self, error: BaseException) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(error)


class Item:
    """One sequence waiting for the model: its window, its request's ticket and its place in the request."""

    __slots__ = ("seq_no", "window", "ticket", "index", "cache_key", "length")

    def __init__(
        self, seq_no: int, window: Window, ticket: Ticket, index: int = 0, cache_key: bytes | None = None
    ) -> None:
        self.seq_no = seq_no
        self.window = window
        self.ticket = ticket
        self.index = index
        self.cache_key = cache_key
        self.length = len(window.ids)


def deduplicate(batch: list[Item]) -> tuple[list[Item], list[int]]:
    """Identical sequences in a batch are computed once: the distinct items, and each item's row among them."""
    first: dict[bytes, int] = {}
    unique: list[Item] = []
    rows: list[int] = []
    for item in batch:
        window = item.window
        key = window.ids.tobytes() + (b"" if window.type_ids is None else b"|" + window.type_ids.tobytes())
        row = first.get(key)
        if row is None:
            row = first[key] = len(unique)
            unique.append(item)
        rows.append(row)
    return unique, rows


def charge(batch: Sequence[Item], number: int, now: float) -> int:
    """Count batch `number`, dispatched at `now`, against each request it serves (its batches, padded and
    computed tokens, first dispatch); returns the batch's longest sequence, the length every row pads to."""
    longest = max(item.length for item in batch)
    for item in batch:
        ticket = item.ticket
        ticket.batches.add(number)
        ticket.padded_tokens += longest
        ticket.computed_tokens += item.length
        if ticket.first_dispatch is None:
            ticket.first_dispatch = now
            ticket.first_dispatch_ns = tracing.wall_ns() if ticket.span is not None else None
    return longest


def backend_timeout(batch: Sequence[Item], now: float, limit: float | None) -> float | None:
    """The batch's backend timeout: the longest deadline left among its requests, within `limit`."""
    deadlines = [item.ticket.deadline for item in batch]
    if any(d is None for d in deadlines):
        return limit
    left = max(deadlines) - now
    return left if limit is None else min(left, limit)
