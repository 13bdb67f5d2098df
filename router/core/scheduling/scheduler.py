"""One scheduler per model: a single queue of sequences from every request, batched across requests.

Requests hand their sequences (whole inputs, truncated inputs or windows) to `ModelScheduler.run` and
await their rows. The parts, each with one job:

- the output cache (cache.py) answers sequences computed before, before anything is queued;
- admission (admission.py) lets the rest in or refuses the request at once, with a retry delay;
- the fair queue (fair_queue.py) holds what waits and says whose turn is next;
- the batch former (batching.py) grows the next batch around that turn's sequence by length;
- the backend (backend.py; adapters/triton) turns the batch's token rows into tensors and runs them.

This module wires them: whenever a dispatch slot is free it forms one batch and sends it, in a task of
its own; a request that finds nothing else waiting and fits one batch runs that batch in its own task,
so a lone small call starts no task and waits for no hop back. An idle model never waits; while all slots
are busy, new sequences pile up and the next batch is picked from a larger, better-sorted pool, so the
wait adapts to load by itself. `max_batch_wait_s` can add a short hold, only while other batches are in
flight, for a batch that would otherwise leave less than full. Identical sequences in one batch are
computed once and each batch's backend timeout is the longest deadline left among its requests
(work.py). A batch whose model version was unloaded mid-rollout runs on the next version (rollout.py).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

import numpy as np

from router.core.backend import Backend
from router.core.config import AdmissionConfig, BatchingConfig
from router.core.criticality import Criticality
from router.core.errors import RouterError
from router.core.models.contract import ModelContract
from router.core.scheduling import admission, rollout
from router.core.scheduling.admission import AdmissionController
from router.core.scheduling.batching import BatchLimits, grow
from router.core.scheduling.cache import OutputCache
from router.core.scheduling.fair_queue import FairQueue
from router.core.scheduling.fleet_share import ALONE, FleetShare
from router.core.scheduling.series import ModelSeries
from router.core.scheduling.tenant_limits import TenantLimiter
from router.core.scheduling.work import Item, Ticket, backend_timeout, charge, deduplicate
from router.core.text.windows import Window
from router.observability import tracing


class ModelScheduler:
    def __init__(
        self,
        contract: ModelContract,
        backend: Backend,
        config: BatchingConfig | None = None,
        cache: OutputCache | None = None,
        admission_config: AdmissionConfig | None = None,
        tenants: TenantLimiter | None = None,
        share: FleetShare = ALONE,
    ) -> None:
        self.contract = contract
        self.share = share
        """This router's part of each server's `max_inflight_batches` (fleet_share.py)."""
        self.backend = backend
        self.config = config or BatchingConfig()
        self.cache = cache
        # The model's own budget (tuned to its hardware) wins over the router-wide default. A budget
        # below the model's longest sequence would strand long sequences: raise it.
        budget = max(contract.max_batch_tokens or self.config.max_batch_tokens, contract.max_sequence_length)
        fill = self.config.min_batch_fill if contract.min_batch_fill is None else contract.min_batch_fill
        self.limits = BatchLimits(contract.max_batch_size, budget, fill)
        self.queue = FairQueue(quantum=2 * budget)
        admission_config = admission_config or AdmissionConfig()
        self.admission = AdmissionController(
            contract.name,
            admission_config,
            self.queue,
            admission_config.queue_tokens_for(contract.max_batch_size, contract.max_sequence_length),
            batch_tokens=budget,
        )
        self.tenants = tenants
        self.successor: ModelScheduler | None = None
        """The scheduler of the model's next version (same tokenizer, same tensors), once the registry has
        switched to it: a batch whose version was unloaded everywhere runs there instead of failing."""
        self.shards = 1
        """Servers that hold the model: `max_inflight_batches` may be in flight to each, so one request's
        batches spread over all of them at once (the backend picks which batch goes where)."""
        self._timer: asyncio.TimerHandle | None = None
        self._seq_numbers = itertools.count()
        self._batch_numbers = itertools.count()
        self._dispatches: set[asyncio.Task] = set()
        self._handovers: set[asyncio.Task] = set()
        """Requests of a batch handed to the successor (rollout.py), running there."""
        self._series = ModelSeries(contract.name)
        self._series.watch(lambda: self.admission.drain.rate or 0.0, self.backlog_s, lambda: self.slots)

    @property
    def pending_sequences(self) -> int:
        return len(self.queue)

    @property
    def pending_tokens(self) -> int:
        return self.queue.tokens

    @property
    def inflight(self) -> int:
        return len(self._dispatches)

    def backlog_s(self) -> float:
        """Seconds the model needs for the work queued and in flight here, at the drain rate (0: none
        measured yet)."""
        rate = self.admission.drain.rate
        return (self.queue.tokens + self.admission.inflight_tokens) / rate if rate else 0.0

    @property
    def slots(self) -> int:
        return self.share.of(self.config.max_inflight_batches) * max(1, self.shards)

    def precheck(
        self, tenant: str = "", deadline: float | None = None, criticality: Criticality = Criticality.DEFAULT
    ) -> None:
        """Refuse now, before the request is tokenized, if what is queued already rules it out."""
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise self._series.refused(admission.deadline_expired(self.contract.name))
        try:
            self.admission.precheck(tenant, deadline, now, criticality)
        except RouterError as error:
            self.admission.arrivals.arrived(now)  # it arrived, and will not reach run()
            raise self._series.refused(error) from None

    async def run(
        self,
        windows: Sequence[Window],
        tenant: str = "",
        deadline: float | None = None,
        pinned: bool = False,
        criticality: Criticality = Criticality.DEFAULT,
    ) -> tuple[np.ndarray, Ticket]:
        """Compute every window; return the output rows in window order and the request's ticket.
        `pinned`: the caller named this version, so none of its work is handed to the next one.

        Raises RouterError OVERLOADED (queue full, overloaded, tenant over its rate) or DEADLINE_EXCEEDED
        (the deadline cannot be met, or passed while waiting) without sending anything to the model.
        """
        now = time.monotonic()
        self.admission.arrivals.arrived(now)
        if deadline is not None and deadline <= now:
            raise self._series.refused(admission.deadline_expired(self.contract.name))
        ticket = Ticket(now, tenant, deadline, criticality, span=tracing.current(), pinned=pinned)
        if ticket.span is not None:
            ticket.arrived_ns = tracing.wall_ns()
        items = self._look_up(ticket, windows)
        if items and self.cache is not None and self.cache.shared is not None:
            items = await self._look_up_shared(ticket, items)
        if items:
            try:
                tokens = sum(item.length for item in items)
                self.admission.admit(ticket, tokens, now)
                if self.tenants is not None:  # last: a request refused for the queue costs its tenant nothing
                    await self.tenants.charge(tenant, tokens)
            except RouterError as error:
                raise self._series.refused(error) from None
            ticket.pending = len(items)
            ticket.done = asyncio.get_running_loop().create_future()
            self.queue.push(ticket, items)
            try:
                alone = self._alone(now)
                if alone is None:
                    self._pump()
                else:
                    await self._dispatch(alone, now)
                await ticket.done
            except BaseException:
                # Cancelled, or a batch failed: the request is over, so its queued work is dropped.
                self._withdraw(self.queue.items_of(ticket))
                if ticket.done.done() and not ticket.done.cancelled():
                    ticket.done.exception()  # a failure it no longer awaits is read here, not lost
                raise
        ticket.finished = time.monotonic()
        self.admission.finished(ticket)
        if ticket.first_dispatch_ns is not None:  # traced, and sent to the model (not all from the cache)
            tracing.note(queue_ms=round((ticket.first_dispatch_ns - ticket.arrived_ns) / 1e6, 3))
        rows = ticket.outputs
        return (rows[0][None] if len(rows) == 1 else np.stack(rows)), ticket

    def _look_up(self, ticket: Ticket, windows: Sequence[Window]) -> list[Item]:
        """Answer what the output cache holds into the ticket; return the rest as items to compute."""
        ticket.outputs = [None] * len(windows)
        items: list[Item] = []
        cache = self.cache
        for index, window in enumerate(windows):
            key = cache.key(self.contract, window) if cache is not None else None
            cached = cache.get(key, self.contract.name) if key is not None else None
            if cached is not None:
                ticket.outputs[index] = cached
                ticket.cache_hits += 1
            else:
                items.append(Item(next(self._seq_numbers), window, ticket, index, key))
        return items

    async def _look_up_shared(self, ticket: Ticket, items: list[Item]) -> list[Item]:
        """Answer what the fleet's cache holds of what this router's did not; return the rest."""
        rows = await self.cache.get_shared([item.cache_key for item in items], self.contract.name)
        left = []
        for item, row in zip(items, rows, strict=True):
            if row is None:
                left.append(item)
            else:
                ticket.outputs[item.index] = row
                ticket.cache_hits += 1
        return left

    def _withdraw(self, items: Sequence[Item]) -> None:
        self.queue.withdraw(items)
        self._report()

    def _expire(self, now: float) -> None:
        """Fail and drop queued requests whose deadline has passed: they never reach the model."""
        for ticket in self.admission.expired(now):
            ticket.fail(self._series.refused(admission.deadline_expired(self.contract.name)))
            self._withdraw(self.queue.items_of(ticket))

    def _pump(self) -> None:
        """Start a batch in a task of its own for every free dispatch slot (or until the queue is empty)."""
        while self.queue and len(self._dispatches) < self.slots:
            now = time.monotonic()
            self._expire(now)
            if not self.queue or self._hold(now):
                break
            self._start(self._take(now), now)
        self._report()

    def _start(self, batch: list[Item], now: float) -> None:
        task = asyncio.get_running_loop().create_task(self._dispatch(batch, now))
        self._dispatches.add(task)
        task.add_done_callback(self._dispatches.discard)

    def _take(self, now: float) -> list[Item]:
        """The next batch out of the queue: the fair queue's turn, grown by length (batching.py) among
        its neighbours in length (a batch can reach no further than its size on either side). A critical
        turn's batch holds critical work alone: small, it is answered soonest."""
        anchor = self.queue.anchor()
        # Counting the critical requests scans the queue: only for a critical turn, not every batch's.
        critical_turn = anchor.ticket.criticality is Criticality.CRITICAL
        if critical_turn and self.queue.requests_up_to(Criticality.CRITICAL) < self.queue.requests:
            critical = [item for item in self.queue.by_length if item.ticket.criticality is Criticality.CRITICAL]
            low, high = grow([item.length for item in critical], critical.index(anchor), self.limits)
            self.admission.dispatched(now)
            return self.queue.take_items(critical[low:high])
        queued = self.queue.by_length
        position = queued.index(anchor)
        reach = self.limits.max_rows
        first = max(0, position - reach)
        lengths = [item.length for item in queued.islice(first, position + reach)]
        low, high = grow(lengths, position - first, self.limits)
        self.admission.dispatched(now)
        return self.queue.take(first + low, first + high)

    def _alone(self, now: float) -> list[Item] | None:
        """The calling request's whole work as one batch, its task holding a dispatch slot for it, when
        nothing else waits, a slot is free and the work fits one batch; None otherwise (`_pump` then).
        `now`: when the request arrived, which is also when such a batch leaves (it never waits)."""
        if self.queue.requests != 1 or len(self._dispatches) >= self.slots:
            return None
        if self._hold(now):
            return None
        batch = self._take(now)
        if self.queue:  # more than one batch's worth: this one and the rest go the usual way
            self._start(batch, now)
            return None
        self._dispatches.add(asyncio.current_task())
        self._report()
        return batch

    def _report(self) -> None:
        self._series.report(self.queue.tokens, len(self._dispatches))

    def _hold(self, now: float) -> bool:
        """Under load, let a batch that would leave less than full wait a little (max_batch_wait_s)."""
        wait = self.config.max_batch_wait_s
        if wait <= 0 or not self._dispatches or self.queue.tokens >= self.limits.max_tokens:
            return False
        if len(self.queue) >= self.limits.max_rows:
            return False
        remaining = min(ticket.submitted for ticket in self.queue.tickets()) + wait - now
        if remaining <= 0:
            return False
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(remaining, self._release)
        return True

    def _release(self) -> None:
        self._timer = None
        self._pump()

    async def _dispatch(self, batch: list[Item], now: float) -> None:
        longest = charge(batch, next(self._batch_numbers), now)
        # Identical sequences in one batch are computed once: `rows[i]` is item i's row in `unique`.
        unique, rows = deduplicate(batch)
        computed = sum(item.length for item in unique)
        self._series.batch(len(unique), computed, len(unique) * longest)
        self.admission.inflight_tokens += computed
        done = 0
        try:
            served = [item.ticket.span for item in batch]
            padded = len(unique) * longest
            with tracing.batch(served, padded):
                timeout = backend_timeout(batch, now, self.config.timeout_s)
                priority = self.contract.priority(min(item.ticket.criticality for item in batch))
                output, shard = await self.backend.infer(
                    self.contract, [item.window for item in unique], timeout, priority
                )
            done = computed
            for item in batch:
                item.ticket.shards.add(shard)
        except BaseException as error:
            if rollout.hand_over(batch, error, self.successor, self._handovers):
                return
            for ticket in dict.fromkeys(item.ticket for item in batch):
                ticket.fail(error)
            if not isinstance(error, Exception):
                raise
        else:
            for row, item in zip(rows, batch, strict=True):
                item.ticket.deliver(item.index, output[row])
            if self.cache is not None:
                self.cache.put_batch([(item.cache_key, output[row]) for row, item in enumerate(unique)])
        finally:
            self.admission.inflight_tokens -= computed
            self.admission.drain.finished(done, time.monotonic(), len(self._dispatches) - 1, waiting=bool(self.queue))
            self._dispatches.discard(asyncio.current_task())
            self._pump()
