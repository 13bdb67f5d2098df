"""Admission for generation streams: a place in the model's running batch, or a short fair wait for one.

A generation model runs at most `slots` streams at once per server (its `max_batch_size`: the running
batch of in-flight batching); the router keeps that many per serving shard at the model and no more, so
the model server's own queue stays empty and the router decides who waits. The rules, as for Embed and
Rerank (admission.py):

- **Bounds**: at most `max_waiting` streams wait, holding at most `max_waiting_tokens` (prompt +
  max_tokens each); past them a stream is refused at once, RESOURCE_EXHAUSTED `QUEUE_FULL` with a retry
  delay from the measured stream time.
- **Deadlines**: a stream whose deadline the wait would pass (streams ahead / slots x the mean stream
  time) is refused at once (DEADLINE_TOO_SHORT); one whose deadline passes while waiting is dropped
  (DEADLINE_EXPIRED).
- **Tenants**: the tenant's token buckets are charged prompt + max_tokens; a free place goes to the
  waiting tenant with the fewest running streams (arrival order within a tenant), so one tenant's burst
  cannot take every place.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from router.core.criticality import Criticality
from router.core.errors import RouterError
from router.core.scheduling import admission
from router.core.scheduling.fleet_share import ALONE, FleetShare
from router.core.scheduling.tenant_limits import TenantLimiter, retry_delay
from router.observability import metrics


@dataclass(eq=False)
class _Waiter:
    tenant: str
    tokens: int
    deadline: float | None
    criticality: Criticality
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class StreamGate:
    def __init__(
        self,
        model: str,
        slots: int,
        max_waiting: int = 64,
        max_waiting_tokens: int = 1 << 20,
        tenants: TenantLimiter | None = None,
        share: FleetShare = ALONE,
    ) -> None:
        self.model = model
        self.share = share
        self.slots_per_shard = max(1, slots)
        self.shards = 1
        self.max_waiting = max_waiting
        self.max_waiting_tokens = max_waiting_tokens
        self.tenants = tenants
        self.running: Counter[str] = Counter()
        self.waiting: list[_Waiter] = []
        self.mean_stream_s: float | None = None
        """Smoothed duration of finished streams: what the wait and retry estimates rest on."""
        self._running_metric = metrics.RUNNING_STREAMS.labels(model)
        self._waiting_metric = metrics.WAITING_STREAMS.labels(model)

    def _measure(self) -> None:
        self._running_metric.set(self.active)
        self._waiting_metric.set(len(self.waiting))

    @property
    def slots(self) -> int:
        return self.share.of(self.slots_per_shard) * max(1, self.shards)

    @property
    def active(self) -> int:
        return sum(self.running.values())

    async def enter(
        self, tenant: str, tokens: int, deadline: float | None, criticality: Criticality = Criticality.DEFAULT
    ) -> float:
        """Wait for a place; return when it was granted (time.monotonic()). Raise RouterError if refused."""
        try:
            return await self._enter(tenant, tokens, deadline, criticality)
        except RouterError as error:
            if error.reason in admission.REASONS:
                metrics.SHED.labels(self.model, error.reason).inc()
            raise

    async def _enter(self, tenant: str, tokens: int, deadline: float | None, criticality: Criticality) -> float:
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise admission.deadline_expired(self.model)
        if self.tenants is not None:
            await self.tenants.charge(tenant, tokens)
        if self.active < self.slots and not self.waiting:
            self.running[tenant] += 1
            self._measure()
            return now
        # Waiters that go before it: those at least as critical (the bounds of its criticality, as in admission).
        before = [w for w in self.waiting if w.criticality <= criticality]
        ahead = len(before) + 1
        wait_s = (ahead / self.slots) * (self.mean_stream_s or 0.0)
        waiting_tokens = sum(w.tokens for w in before) + tokens
        share = criticality.bound_share
        if len(before) >= self.max_waiting * share or waiting_tokens > self.max_waiting_tokens * share:
            raise RouterError(
                admission.QUEUE_FULL,
                f"model {self.model!r} has {self.active} streams running and {len(self.waiting)} waiting",
                retry_after_s=retry_delay(wait_s or 1.0, 1.0),
                metadata={"model": self.model},
            )
        if deadline is not None and self.mean_stream_s and now + wait_s > deadline:
            raise RouterError(
                admission.DEADLINE_TOO_SHORT,
                f"a place among {self.model!r}'s running streams is about {wait_s:.2f} s away, past the deadline",
                metadata={"model": self.model},
            )
        waiter = _Waiter(tenant, tokens, deadline, criticality)
        self.waiting.append(waiter)
        self._measure()
        try:
            left = None if deadline is None else deadline - now
            await asyncio.wait_for(asyncio.shield(waiter.future), left)
        except TimeoutError:
            self._forget(waiter)
            raise admission.deadline_expired(self.model) from None
        except BaseException:
            self._forget(waiter)
            raise
        return time.monotonic()

    def _forget(self, waiter: _Waiter) -> None:
        if waiter in self.waiting:
            self.waiting.remove(waiter)
            self._measure()
        elif waiter.future.done() and not waiter.future.cancelled():
            self.leave(waiter.tenant, None)  # it was granted a place just as it gave up

    def leave(self, tenant: str, duration_s: float | None) -> None:
        """A stream ended after `duration_s` (None: it did not run); its place goes to the next waiter."""
        self.running[tenant] -= 1
        if self.running[tenant] <= 0:
            del self.running[tenant]
        if duration_s is not None:
            mean = self.mean_stream_s
            self.mean_stream_s = duration_s if mean is None else 0.8 * mean + 0.2 * duration_s
        self.admit_waiting()

    def admit_waiting(self) -> None:
        """Hand free places to waiters: the most critical first, then the tenant with the fewest running
        streams."""
        while self.waiting and self.active < self.slots:
            # min keeps arrival order on ties
            waiter = min(self.waiting, key=lambda w: (w.criticality, self.running[w.tenant]))
            self.waiting.remove(waiter)
            if waiter.future.done():
                continue
            self.running[waiter.tenant] += 1
            waiter.future.set_result(None)
        self._measure()
