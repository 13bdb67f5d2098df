"""One scheduler per model: a single queue of sequences from every request, batched across requests.

Requests hand their sequences (whole inputs, truncated inputs or windows) to `ModelScheduler.run` and
await their rows. The scheduler keeps every pending sequence twice: in arrival order and sorted by
length. Whenever a dispatch slot is free it forms one batch:

1. the oldest pending sequence anchors the batch, so nothing waits behind younger work for ever;
2. the batch grows with the pending sequences closest to the anchor's length, from any request, while
   `rows x longest` stays within the token budget, `rows` within the model's max batch size, and real
   tokens stay at least `min_batch_fill` of the padded batch.

There is no timer. When the model is idle a request's sequences leave at once; while all dispatch slots
are busy, new sequences pile up and the next batch is formed from a larger, better-sorted pool. The
wait thus adapts to load by itself. A huge request cannot hold small ones back for long: its sequences
are spread over many batches, and every new batch starts from the oldest sequence, which is soon a
small request's.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sortedcontainers import SortedKeyList

from router.core.backend import Backend
from router.core.contract import ModelContract
from router.core.packing import fits, pad_rows
from router.core.tokenize import Window


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_tokens: int = 8192
    """Padded tokens (rows x longest row) per batch."""
    max_inflight_batches: int = 2
    """Batches sent to the backend at once for this model."""
    min_batch_fill: float = 0.0
    """Least share of real (unpadded) tokens in a batch: a sequence joins a batch only if the batch
    stays at least this full. On a CPU, where padding is the whole cost, 0.8 or so; on a GPU, 0."""
    timeout_s: float | None = 60.0
    """Backend timeout for one batch."""


@dataclass
class Ticket:
    """One request's passage through the scheduler."""

    submitted: float
    first_dispatch: float | None = None
    finished: float | None = None
    batches: set[int] = field(default_factory=set)


@dataclass(eq=False)
class _Item:
    seq_no: int
    window: Window
    ticket: Ticket
    future: asyncio.Future

    @property
    def length(self) -> int:
        return self.window.length


class ModelScheduler:
    def __init__(self, contract: ModelContract, backend: Backend, config: SchedulerConfig) -> None:
        self.contract = contract
        self.backend = backend
        self.config = config
        # The model's own budget (tuned to its hardware) wins over the router-wide default. A budget
        # below the model's longest sequence would strand long sequences: raise it.
        budget = contract.max_batch_tokens or config.max_batch_tokens
        self.max_batch_tokens = max(budget, contract.max_sequence_length)
        self.min_batch_fill = config.min_batch_fill if contract.min_batch_fill is None else contract.min_batch_fill
        self._pending: dict[int, _Item] = {}
        self._by_length: SortedKeyList = SortedKeyList(key=lambda item: (item.length, item.seq_no))
        self._seq_numbers = itertools.count()
        self._batch_numbers = itertools.count()
        self._inflight = 0
        self.pending_tokens = 0

    @property
    def pending_sequences(self) -> int:
        return len(self._pending)

    async def run(self, windows: Sequence[Window]) -> tuple[np.ndarray, Ticket]:
        """Compute every window; return the output rows in window order and the request's ticket."""
        loop = asyncio.get_running_loop()
        ticket = Ticket(submitted=time.monotonic())
        items = [_Item(next(self._seq_numbers), w, ticket, loop.create_future()) for w in windows]
        for item in items:
            self._pending[item.seq_no] = item
            self._by_length.add(item)
            self.pending_tokens += item.length
        self._pump()
        try:
            rows = await asyncio.gather(*(item.future for item in items))
        except BaseException:
            # Cancelled, or a batch failed: the request is over, so its queued work is dropped.
            self._withdraw(items)
            raise
        ticket.finished = time.monotonic()
        return np.stack(rows), ticket

    def _withdraw(self, items: Sequence[_Item]) -> None:
        for item in items:
            if self._pending.pop(item.seq_no, None) is not None:
                self._by_length.remove(item)
                self.pending_tokens -= item.length
            if not item.future.done():
                item.future.cancel()

    def _pump(self) -> None:
        while self._pending and self._inflight < self.config.max_inflight_batches:
            batch = self._take_batch()
            self._inflight += 1
            asyncio.get_running_loop().create_task(self._dispatch(batch))

    def _take_batch(self) -> list[_Item]:
        anchor = next(iter(self._pending.values()))
        ordered = self._by_length
        position = ordered.index(anchor)
        batch, longest, real = [anchor], anchor.length, anchor.length
        low, high = position - 1, position + 1
        limit, budget, fill = self.contract.max_batch_size, self.max_batch_tokens, self.min_batch_fill
        while len(batch) < limit:
            candidates = []
            if low >= 0:
                candidates.append((anchor.length - ordered[low].length, -1))
            if high < len(ordered):
                candidates.append((ordered[high].length - anchor.length, +1))
            candidates.sort()
            for _, side in candidates:
                item = ordered[low] if side < 0 else ordered[high]
                grown = max(longest, item.length)
                full_enough = real + item.length >= fill * grown * (len(batch) + 1)
                if full_enough and fits(len(batch) + 1, grown, limit, budget):
                    batch.append(item)
                    longest, real = grown, real + item.length
                    if side < 0:
                        low -= 1
                    else:
                        high += 1
                    break
            else:
                break
        for item in batch:
            del self._pending[item.seq_no]
            self.pending_tokens -= item.length
        del ordered[low + 1 : high]
        return batch

    async def _dispatch(self, batch: list[_Item]) -> None:
        number = next(self._batch_numbers)
        now = time.monotonic()
        for item in batch:
            item.ticket.batches.add(number)
            if item.ticket.first_dispatch is None:
                item.ticket.first_dispatch = now
        try:
            output = await self.backend.infer(
                self.contract.name, self._tensors(batch), self.contract.output_name, self.config.timeout_s
            )
        except BaseException as error:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            for row, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result(output[row])
        finally:
            self._inflight -= 1
            self._pump()

    def _tensors(self, batch: list[_Item]) -> dict[str, np.ndarray]:
        ids, mask = pad_rows([item.window.ids for item in batch])
        tensors = {"input_ids": ids}
        if self.contract.wants_attention_mask:
            tensors["attention_mask"] = mask
        if self.contract.wants_token_type_ids:
            type_ids, _ = pad_rows([item.window.type_ids for item in batch])
            tensors["token_type_ids"] = type_ids
        return tensors
