"""One scheduler per model: a single queue of sequences from every request, batched across requests.

Requests hand their sequences (whole inputs, truncated inputs or windows) to `ModelScheduler.run` and
await their rows. The scheduler keeps every pending sequence in its request's queue and in one list
sorted by length. Whenever a dispatch slot is free it forms one batch:

1. the anchor is the oldest pending sequence of the request chosen by fair queuing: between tenants,
   start-time fair queuing in tokens (a quiet tenant is never starved by a noisy one's backlog: service
   between them alternates); within a tenant, deficit round robin with a quantum of two batches' worth
   of tokens. So a tenant's small requests are served in arrival order (which keeps their latency low
   under overload), and a 5,000-document request yields to a one-text request that arrives meanwhile
   after at most one quantum;
2. the batch grows with the pending sequences closest to the anchor's length, from any request, while
   `rows x longest` stays within the token budget, `rows` within the model's max batch size, and real
   tokens stay at least `min_batch_fill` of the padded batch.

Batches leave as soon as a dispatch slot is free, so an idle model never waits; while all slots are
busy, new sequences pile up and the next batch is formed from a larger, better-sorted pool: the wait
adapts to load by itself. `max_batch_wait_s` can add a short hold, only while other batches are in
flight, for a batch that would otherwise leave less than full (worth it on a GPU, not on a CPU).
Identical sequences in one batch are computed once, and with an output cache a sequence computed
before (same model, version and token ids) is not computed again.

Admission happens here too (admission.py): a request is let in only while the queue holds fewer tokens
and requests than its bounds, and only if the measured drain rate says it can finish before its
deadline; a request whose deadline passes while it waits is dropped before it reaches the model; and
each batch's Triton timeout is the longest deadline left among its requests.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sortedcontainers import SortedKeyList

from router import metrics
from router.core import admission
from router.core.admission import AdmissionConfig, Calibration, DrainRate, TenantLimiter
from router.core.backend import Backend
from router.core.cache import OutputCache
from router.core.contract import ModelContract
from router.core.errors import RouterError
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
    max_batch_wait_s: float = 0.0
    """While other batches are in flight, hold a batch that would leave less than full for up to this
    long, for more sequences to join. An idle model never waits."""
    timeout_s: float | None = 60.0
    """Backend timeout for one batch."""


@dataclass(eq=False)
class Ticket:
    """One request's passage through the scheduler (compared by identity)."""

    submitted: float
    tenant: str = ""
    deadline: float | None = None
    """time.monotonic() by which the caller stops waiting."""
    first_dispatch: float | None = None
    finished: float | None = None
    batches: set[int] = field(default_factory=set)
    padded_tokens: int = 0
    """Each of the request's rows costs its batch's longest row."""
    computed_tokens: int = 0
    """Tokens of the request's sequences sent to the model (cache hits are not)."""
    cache_hits: int = 0
    start: float = 0.0
    """The virtual time the request joined the queue at."""
    estimate: float | None = None
    """Seconds the drain rate said the request would take, when it was admitted."""
    queued: int = 0
    """Tokens of the request still waiting in the queue."""
    served: float = 0.0
    """Tokens dispatched for the request since it joined."""


@dataclass(eq=False)
class _Item:
    seq_no: int
    window: Window
    ticket: Ticket
    future: asyncio.Future
    cache_key: bytes | None = None

    @property
    def length(self) -> int:
        return self.window.length


class ModelScheduler:
    def __init__(
        self,
        contract: ModelContract,
        backend: Backend,
        config: SchedulerConfig,
        cache: OutputCache | None = None,
        admission_config: AdmissionConfig | None = None,
        tenants: TenantLimiter | None = None,
    ) -> None:
        self.contract = contract
        self.backend = backend
        self.config = config
        self.cache = cache
        self.admission = admission_config or AdmissionConfig()
        self.tenants = tenants
        self.max_queued_tokens = self.admission.queue_tokens_for(contract.max_batch_size, contract.max_sequence_length)
        self.drain = DrainRate()
        self.calibration = Calibration()
        self._inflight_tokens = 0
        # Fair-share tags (start-time fair queuing), per tenant and per request, and the virtual clocks.
        self._tenant_served: dict[str, float] = {}
        self._tenant_clock = 0.0
        self._request_clock = 0.0
        name = contract.name
        self._batches = metrics.BATCHES.labels(name)
        self._batch_rows = metrics.BATCH_ROWS.labels(name)
        self._real_tokens = metrics.REAL_TOKENS.labels(name)
        self._padded_tokens = metrics.PADDED_TOKENS.labels(name)
        self._queued_tokens = metrics.QUEUED_TOKENS.labels(name)
        self._shed = {reason: metrics.SHED.labels(name, reason) for reason in admission.REASONS}
        # The model's own budget (tuned to its hardware) wins over the router-wide default. A budget
        # below the model's longest sequence would strand long sequences: raise it.
        budget = contract.max_batch_tokens or config.max_batch_tokens
        self.max_batch_tokens = max(budget, contract.max_sequence_length)
        self.min_batch_fill = config.min_batch_fill if contract.min_batch_fill is None else contract.min_batch_fill
        self.quantum = 2 * self.max_batch_tokens
        # Pending sequences per request, each in arrival order; and all of them sorted by length.
        self._queues: dict[Ticket, dict[int, _Item]] = {}
        self._by_length: SortedKeyList = SortedKeyList(key=lambda item: (item.length, item.seq_no))
        self._timer: asyncio.TimerHandle | None = None
        self._seq_numbers = itertools.count()
        self._batch_numbers = itertools.count()
        self._inflight = 0
        self.pending_tokens = 0

    @property
    def pending_sequences(self) -> int:
        return len(self._by_length)

    async def run(
        self, windows: Sequence[Window], tenant: str = "", deadline: float | None = None
    ) -> tuple[np.ndarray, Ticket]:
        """Compute every window; return the output rows in window order and the request's ticket.

        Raises RouterError OVERLOADED (queue full, tenant over its rate) or DEADLINE_EXCEEDED (the
        deadline cannot be met, or passed while waiting) without sending anything to the model.
        """
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise self._shed_error(admission.deadline_expired(self.contract.name))
        ticket = Ticket(submitted=now, tenant=tenant, deadline=deadline)
        futures: list[asyncio.Future] = []
        items: list[_Item] = []
        for window in windows:
            future = loop.create_future()
            futures.append(future)
            key = OutputCache.key(self.contract, window) if self.cache is not None else None
            cached = self.cache.get(key, self.contract.name) if key is not None else None
            if cached is not None:
                future.set_result(cached)
                ticket.cache_hits += 1
            else:
                items.append(_Item(next(self._seq_numbers), window, ticket, future, key))
        if items:
            tokens = sum(item.length for item in items)
            self._admit(ticket, tokens, now)
            self._join(ticket)
            self._queues[ticket] = {item.seq_no: item for item in items}
            self._by_length.update(items)
            self.pending_tokens += tokens
            ticket.queued = tokens
        self._pump()
        try:
            rows = await asyncio.gather(*futures)
        except BaseException:
            # Cancelled, or a batch failed: the request is over, so its queued work is dropped.
            self._withdraw(items)
            raise
        ticket.finished = time.monotonic()
        if ticket.estimate is not None:
            self.calibration.observe(ticket.estimate, ticket.finished - ticket.submitted)
        return np.stack(rows), ticket

    def _admit(self, ticket: Ticket, tokens: int, now: float) -> None:
        if self.admission.enabled and self._queues and not self._has_room(ticket.tenant, tokens):
            # Room opens as queued turns drain: the retry delay counts them as _has_room does. Refused
            # for the request count or the tenant's share instead, wait for about one turn.
            turn = min(tokens, self.quantum)
            excess = self._queued_turns() + turn - self.max_queued_tokens
            raise self._shed_error(
                admission.queue_full(
                    self.contract.name,
                    tokens,
                    self.pending_tokens,
                    len(self._queues),
                    excess if excess > 0 else turn,
                    self.drain.rate,
                )
            )
        if self.admission.enabled and self.admission.shed_on_deadline and ticket.deadline and self.drain.rate:
            ticket.estimate = self._work_ahead(ticket.tenant, tokens) / self.drain.rate
            estimate = ticket.estimate * self.calibration.factor
            if now + estimate > ticket.deadline:
                raise self._shed_error(
                    admission.deadline_too_short(self.contract.name, estimate, ticket.deadline - now)
                )
        if self.tenants is not None:
            try:
                self.tenants.charge(ticket.tenant, tokens)
            except RouterError as error:
                raise self._shed_error(error) from None

    def _turn(self, ticket: Ticket) -> int:
        """Tokens a waiting request takes before a newcomer's first turn: at most one quantum."""
        return min(ticket.queued, self.quantum)

    def _queued_turns(self) -> int:
        return sum(self._turn(t) for t in self._queues)

    def _work_ahead(self, tenant: str, tokens: int) -> float:
        """Tokens the model must get through before this request is done: what is in flight, a turn of
        each request of its tenant already waiting (deficit round robin), the request itself, and as
        much of each other tenant's waiting turns (fair share between tenants)."""
        own = tokens + sum(self._turn(t) for t in self._queues if t.tenant == tenant)
        others = sum(self._turn(t) for t in self._queues if t.tenant != tenant)
        other_tenants = len({t.tenant for t in self._queues} - {tenant})
        return self._inflight_tokens + own + min(others, own * other_tenants)

    def _has_room(self, tenant: str, tokens: int) -> bool:
        """Queued work is counted as it will be served, a turn (at most a quantum) per request, so a
        huge request admitted into an empty queue does not lock later ones out. Within the bounds,
        anyone gets in. Past them, a tenant holding less than its fair share still does, up to twice the
        bounds: a noisy tenant cannot lock a quiet one out."""
        max_tokens, max_requests = self.max_queued_tokens, self.admission.max_queued_requests
        turn = min(tokens, self.quantum)
        queued = self._queued_turns() + turn
        requests = len(self._queues) + 1
        if queued <= max_tokens and requests <= max_requests:
            return True
        if queued > 2 * max_tokens or requests > 2 * max_requests:
            return False
        tenants = len({t.tenant for t in self._queues} | {tenant})
        mine = [t for t in self._queues if t.tenant == tenant]
        own_tokens = sum(self._turn(t) for t in mine) + turn
        return own_tokens <= max_tokens / tenants and len(mine) + 1 <= max_requests / tenants

    def _shed_error(self, error: RouterError) -> RouterError:
        """Count a refusal by its reason, and hand the error back for raising."""
        if error.reason in self._shed:
            self._shed[error.reason].inc()
        return error

    def _join(self, ticket: Ticket) -> None:
        """Start-time fair queuing between tenants: a tenant with nothing waiting joins at the current
        virtual time (the tag of the tenant served last), unless its own earlier tag is later; its tag
        then grows by the tokens dispatched for it. Within the tenant, a request joins at the request
        clock and keeps its place until it has had a quantum (see _tag)."""
        waiting = {t.tenant for t in self._queues}
        if ticket.tenant not in waiting:
            earlier = self._tenant_served.get(ticket.tenant, 0.0)
            self._tenant_served[ticket.tenant] = max(self._tenant_clock, earlier)
            if len(self._tenant_served) > 4 * len(waiting) + 1024:
                self._tenant_served = {n: self._tenant_served[n] for n in waiting | {ticket.tenant}}
        ticket.start = self._request_clock

    def _tag(self, ticket: Ticket) -> float:
        """A request's tag moves only in whole quanta (two batches' worth of tokens): until it has had
        a quantum it keeps its place, so requests are served in arrival order; a request bigger than
        that yields to the next one after each quantum (deficit round robin)."""
        return ticket.start + self.quantum * (ticket.served // self.quantum)

    def _expire(self, now: float) -> None:
        """Fail and drop queued requests whose deadline has passed: they never reach the model."""
        expired = [t for t in self._queues if t.deadline is not None and t.deadline <= now]
        for ticket in expired:
            error = self._shed_error(admission.deadline_expired(self.contract.name))
            items = list(self._queues[ticket].values())
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
            self._withdraw(items)

    def _withdraw(self, items: Sequence[_Item]) -> None:
        for item in items:
            queue = self._queues.get(item.ticket)
            if queue is not None and queue.pop(item.seq_no, None) is not None:
                self._by_length.remove(item)
                self.pending_tokens -= item.length
                if not queue:
                    del self._queues[item.ticket]
                item.ticket.queued -= item.length
            if not item.future.done():
                item.future.cancel()

    def _pump(self) -> None:
        while self._queues and self._inflight < self.config.max_inflight_batches:
            if self.admission.enabled:
                self._expire(time.monotonic())
            if not self._queues or self._hold():
                break
            batch = self._take_batch()
            self.drain.started(time.monotonic())
            self._inflight += 1
            asyncio.get_running_loop().create_task(self._dispatch(batch))
        self._queued_tokens.set(self.pending_tokens)

    def _hold(self) -> bool:
        """Under load, let a batch that would leave less than full wait a little (see max_batch_wait_s)."""
        wait = self.config.max_batch_wait_s
        if wait <= 0 or self._inflight == 0 or self.pending_tokens >= self.max_batch_tokens:
            return False
        if len(self._by_length) >= self.contract.max_batch_size:
            return False
        oldest = min(ticket.submitted for ticket in self._queues)
        remaining = oldest + wait - time.monotonic()
        if remaining <= 0:
            return False
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(remaining, self._release)
        return True

    def _release(self) -> None:
        self._timer = None
        self._pump()

    def _take_batch(self) -> list[_Item]:
        # The smallest tag first: the tenant's, then the request's within it; on a tie, the older.
        tenants: dict[str, list[Ticket]] = {}
        for waiting in self._queues:
            tenants.setdefault(waiting.tenant, []).append(waiting)
        tenant = min(tenants, key=lambda n: (self._tenant_served[n], min(t.submitted for t in tenants[n])))
        ticket = min(tenants[tenant], key=lambda t: (self._tag(t), t.submitted))
        self._tenant_clock = max(self._tenant_clock, self._tenant_served[tenant])
        self._request_clock = max(self._request_clock, self._tag(ticket))
        anchor = next(iter(self._queues[ticket].values()))
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
            queue = self._queues[item.ticket]
            del queue[item.seq_no]
            if not queue:
                del self._queues[item.ticket]
            item.ticket.queued -= item.length
            item.ticket.served += item.length
            self._tenant_served[item.ticket.tenant] += item.length
            self.pending_tokens -= item.length
        del ordered[low + 1 : high]
        return batch

    async def _dispatch(self, batch: list[_Item]) -> None:
        number = next(self._batch_numbers)
        now = time.monotonic()
        longest = max(item.length for item in batch)
        for item in batch:
            item.ticket.batches.add(number)
            item.ticket.padded_tokens += longest
            item.ticket.computed_tokens += item.length
            if item.ticket.first_dispatch is None:
                item.ticket.first_dispatch = now
        # Identical sequences in one batch are computed once: `rows[i]` is item i's row in `unique`.
        unique, rows = _deduplicate(batch)
        computed = sum(item.length for item in unique)
        self._batches.inc()
        self._batch_rows.observe(len(unique))
        self._real_tokens.inc(computed)
        self._padded_tokens.inc(len(unique) * longest)
        self._inflight_tokens += computed
        done = 0
        try:
            output = await self.backend.infer(
                self.contract.name, self._tensors(unique), self.contract.output_name, self._timeout(batch, now)
            )
            done = computed
        except BaseException as error:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            for row, item in zip(rows, batch, strict=True):
                if not item.future.done():
                    item.future.set_result(output[row])
            if self.cache is not None:
                for row, item in enumerate(unique):
                    self.cache.put(item.cache_key, output[row])
        finally:
            self._inflight -= 1
            self._inflight_tokens -= computed
            self.drain.finished(done, time.monotonic(), self._inflight)
            self._pump()

    def _timeout(self, batch: list[_Item], now: float) -> float | None:
        """The backend timeout: the longest deadline left among the batch's requests, within the setting."""
        deadlines = [item.ticket.deadline for item in batch]
        if any(d is None for d in deadlines):
            return self.config.timeout_s
        left = max(deadlines) - now
        return left if self.config.timeout_s is None else min(left, self.config.timeout_s)

    def _tensors(self, batch: list[_Item]) -> dict[str, np.ndarray]:
        ids, mask = pad_rows([item.window.ids for item in batch])
        tensors = {"input_ids": ids}
        if self.contract.wants_attention_mask:
            tensors["attention_mask"] = mask
        if self.contract.wants_token_type_ids:
            type_ids, _ = pad_rows([item.window.type_ids for item in batch])
            tensors["token_type_ids"] = type_ids
        return tensors


def _deduplicate(batch: list[_Item]) -> tuple[list[_Item], list[int]]:
    first: dict[bytes, int] = {}
    unique: list[_Item] = []
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
