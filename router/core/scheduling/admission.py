"""Admission: what a model's scheduler lets in, and how it says no. Every rule lives here.

Work is counted in tokens and in requests, and queued work as it will be served: a turn (at most a
quantum) per waiting request (router/core/scheduling/fair_queue.py), so one huge request admitted into an empty
queue does not lock later ones out. The rules, in the order they are applied:

1. **Bounds.** A model admits a request while its queued turns stay within `max_queued_tokens` and its
   waiting requests within `max_queued_requests`. Past them, a tenant holding less than its fair share of
   the queue still gets in (up to twice the bounds): a noisy tenant cannot lock a quiet one out.
2. **Overload: a short queue** (the queue-delay target of CoDel and Facebook's "Fail at Scale"). While
   work arrives more than `overload_ratio` times as fast as the model drains it when kept busy (requests
   per second over `overload_window_s`, times their mean tokens, against the saturated drain rate), the
   queue is growing: a new request is then admitted only if the work ahead of it drains within
   `queue_delay_target_s`, or within `queue_delay_deadline_share` of its own deadline if that is longer
   (no deadline: rule 1 alone), and never less than the time to drain what is in flight and half a
   batch more: the batch former always has half a batch waiting to choose from by length, because a
   short pool makes small batches and on a CPU those cost throughput (bench/FINDINGS.md, Admission
   control, has the floors measured against this one). So under
   overload admitted calls are answered fast, the rest are refused at once with a retry delay, and the
   model never idles. A queue that is long but keeps up (load near capacity, a burst) is left to the
   deadline rule: its calls make it, and refusing them would only lose goodput. (CoDel's standing-queue
   signal and requests arrived per request served were tried first: FINDINGS, Admission control.)
3. **Deadlines.** A request the measured drain rate says cannot finish before its deadline is refused
   at once (DEADLINE_TOO_SHORT); estimates are corrected by how much longer admitted requests took. Only
   the rate measured while work waited (the model saturated) is trusted for this: a lightly loaded
   model's busy rate is mostly the fixed cost of small batches (here 180 one-text calls left a busy rate
   of 503 tokens/s, and the model then embedded 10,162 tokens in 2.98 s, 3,400 tokens/s; on CI, twice,
   a request of about 10,000 tokens was refused as needing 132 s and 160 s), so until the model has been
   seen saturated, nothing is refused on a deadline estimate. One whose
   deadline passes while it waits is dropped before it reaches the model (DEADLINE_EXPIRED).
Critical work (router/core/criticality.py) is served before the rest and is exempt from rule 2: it is
refused only past twice the bounds (counting critical work alone) or on its deadline (rule 3).

4. **Tenant rates** per tenant (call metadata `x-tenant-id`) in requests/s and tokens/s, in this router
   or across the fleet of routers (tenant_limits.py), charged by the scheduler once rules 1-3 admit.

Refusals are RESOURCE_EXHAUSTED (or DEADLINE_EXCEEDED) with a RetryInfo delay: the work that must
drain first divided by the rate the model drains it. `precheck` applies rules 2 and 3 to the work already
queued before a request is even tokenized, so under overload a refusal costs almost nothing.
"""

from __future__ import annotations

from router.core.config import AdmissionConfig
from router.core.criticality import Criticality
from router.core.errors import DEADLINE_EXPIRED, DEADLINE_TOO_SHORT, QUEUE_FULL, TENANT_RATE_LIMITED, RouterError
from router.core.scheduling.drain import ArrivalRate, Calibration, DrainRate
from router.core.scheduling.fair_queue import FairQueue
from router.core.scheduling.tenant_limits import MAX_RETRY_S, MIN_RETRY_S, retry_delay
from router.core.scheduling.work import Ticket

REASONS = (QUEUE_FULL, TENANT_RATE_LIMITED, DEADLINE_TOO_SHORT, DEADLINE_EXPIRED)


# Fewer arrivals than this in the window say nothing about overload.
_MIN_ARRIVALS = 10


class AdmissionController:
    """One model's admission: every rule above, applied to its fair queue."""

    def __init__(
        self,
        model: str,
        config: AdmissionConfig,
        queue: FairQueue,
        max_queued_tokens: int,
        batch_tokens: int = 0,
    ) -> None:
        self.model = model
        self.config = config
        self.queue = queue
        self.max_queued_tokens = max_queued_tokens
        self.batch_tokens = batch_tokens
        """The model's padded tokens per batch: under overload half of one may wait beyond what is in flight."""
        self.drain = DrainRate()
        self.calibration = Calibration()
        self.arrivals = ArrivalRate(config.overload_window_s)
        self.mean_tokens: float | None = None
        """Tokens per admitted request, smoothed: what an arrival not yet tokenized will likely cost."""
        self.inflight_tokens = 0
        """Tokens sent to the backend and not yet answered (the scheduler keeps it)."""

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def overloaded(self, now: float) -> bool:
        """Whether work arrives faster than the model can drain it (see rule 2)."""
        arrived = self.arrivals.count(now)
        if arrived < _MIN_ARRIVALS or not self.drain.rate or not self.mean_tokens:
            return False
        demand = arrived / self.config.overload_window_s * self.mean_tokens
        return demand > self.config.overload_ratio * self.drain.rate

    def precheck(
        self, tenant: str, deadline: float | None, now: float, criticality: Criticality = Criticality.DEFAULT
    ) -> None:
        """Refuse a request before any work is done on it, from what is queued already."""
        if not self.enabled or not self.queue or not self.drain.rate:
            return
        work = self._work_ahead(tenant, 0, criticality)
        if criticality is not Criticality.CRITICAL:
            self._check_delay(work / self.drain.rate, deadline, now)
        saturated = self.drain.saturated_rate
        if not (self.config.shed_on_deadline and deadline is not None and saturated):
            return
        estimate = self.calibration.adjust(work / saturated)
        if now + estimate > deadline:
            raise deadline_too_short(self.model, estimate, deadline - now, self._basis())

    def admit(self, ticket: Ticket, tokens: int, now: float) -> None:
        """Let the request's `tokens` into the queue, or raise the refusal."""
        self.mean_tokens = tokens if self.mean_tokens is None else 0.9 * self.mean_tokens + 0.1 * tokens
        if self.enabled and self.queue:
            if not self._has_room(ticket.tenant, tokens, ticket.criticality):
                raise self._queue_full(tokens, ticket.criticality)
            if self.drain.rate and ticket.criticality is not Criticality.CRITICAL:
                ahead = self._work_ahead(ticket.tenant, 0, ticket.criticality)
                self._check_delay(ahead / self.drain.rate, ticket.deadline, now)
        saturated = self.drain.saturated_rate
        if self.enabled and self.config.shed_on_deadline and ticket.deadline and saturated:
            ticket.estimate = self._work_ahead(ticket.tenant, tokens, ticket.criticality) / saturated
            estimate = self.calibration.adjust(ticket.estimate)
            if now + estimate > ticket.deadline:
                raise deadline_too_short(self.model, estimate, ticket.deadline - now, self._basis())

    def expired(self, now: float) -> list[Ticket]:
        """Waiting requests whose deadline has passed (none when admission is off)."""
        if not self.enabled:
            return []
        return [t for t in self.queue.tickets() if t.deadline is not None and t.deadline <= now]

    def _basis(self) -> dict[str, str]:
        return {
            # The rate deadline estimates rest on (rule 3): the one measured while work waited.
            "drain_tokens_per_s": f"{self.drain.saturated_rate or 0:.0f}",
            "queued_tokens": str(self.queue.tokens),
            "inflight_tokens": str(self.inflight_tokens),
            "correction_ms": f"{self.calibration.offset_s * 1000:.0f}",
        }

    def dispatched(self, now: float) -> None:
        """A batch left."""
        self.drain.started(now)

    def finished(self, ticket: Ticket) -> None:
        """A request got all its rows: learn how good its estimate was."""
        if ticket.estimate is not None:
            self.calibration.observe(ticket.estimate, ticket.finished - ticket.submitted)

    def _check_delay(self, wait_ahead_s: float, deadline: float | None, now: float) -> None:
        config = self.config
        if deadline is None or not self.overloaded(now):
            return
        # Never less than what is in flight and half a batch more: the batch former keeps a pool to pick from.
        floor = (self.inflight_tokens + self.batch_tokens / 2) / self.drain.rate if self.drain.rate else 0.0
        target = max(config.queue_delay_target_s, config.queue_delay_deadline_share * (deadline - now), floor)
        if wait_ahead_s > target:
            raise queue_full(
                self.model,
                self.queue.tokens,
                self.queue.requests,
                retry_after_s=min(MAX_RETRY_S, max(MIN_RETRY_S, wait_ahead_s - target)),
                why="overloaded: work arrives faster than it is served",
            )

    def _work_ahead(self, tenant: str, tokens: int, criticality: Criticality) -> float:
        """Tokens the model must get through before a request of `tokens` is done: what is in flight, a
        turn of each request of its tenant already waiting (deficit round robin), the request itself, and
        as much of each other tenant's waiting turns (fair share between tenants); of the waiting work,
        only what is at least as critical (the rest is served after it)."""
        own = tokens + self.queue.turns(tenant, criticality)
        others = self.queue.turns(None, criticality) - self.queue.turns(tenant, criticality)
        other_tenants = len(self.queue.waiting_tenants() - {tenant})
        return self.inflight_tokens + own + min(others, own * other_tenants)

    def _has_room(self, tenant: str, tokens: int, criticality: Criticality) -> bool:
        """Within the bounds, anyone gets in. Past them, a tenant holding less than its fair share still
        does, up to twice the bounds. Bounds and queue are of the request's criticality: critical work
        counts critical work against twice the bounds, sheddable work all work against half."""
        share = criticality.bound_share
        max_tokens, max_requests = self.max_queued_tokens * share, self.config.max_queued_requests * share
        turn = min(tokens, self.queue.quantum)
        queued = self.queue.turns(None, criticality) + turn
        requests = self.queue.requests_up_to(criticality) + 1
        if queued <= max_tokens and requests <= max_requests:
            return True
        if queued > 2 * max_tokens or requests > 2 * max_requests:
            return False
        tenants = len(self.queue.waiting_tenants() | {tenant})
        own_tokens = self.queue.turns(tenant) + turn
        return own_tokens <= max_tokens / tenants and self.queue.requests_of(tenant) + 1 <= max_requests / tenants

    def _queue_full(self, tokens: int, criticality: Criticality) -> RouterError:
        # Room opens as queued turns drain: the retry delay counts them as _has_room does. Refused for
        # the request count or the tenant's share instead, wait for about one turn.
        turn = min(tokens, self.queue.quantum)
        excess = self.queue.turns(None, criticality) + turn - self.max_queued_tokens * criticality.bound_share
        return queue_full(
            self.model,
            self.queue.tokens,
            self.queue.requests,
            retry_after_s=retry_delay(excess if excess > 0 else turn, self.drain.rate),
            request_tokens=tokens,
        )


def queue_full(
    model: str,
    queued_tokens: int,
    queued_requests: int,
    retry_after_s: float,
    request_tokens: int | None = None,
    why: str = "",
) -> RouterError:
    metadata = {"model": model, "queued_tokens": str(queued_tokens)}
    if request_tokens is not None:
        metadata["request_tokens"] = str(request_tokens)
    return RouterError(
        QUEUE_FULL,
        f"model {model!r} is busy{' (' + why + ')' if why else ''}: "
        f"{queued_requests} requests and {queued_tokens} tokens are waiting",
        retry_after_s=retry_after_s,
        metadata=metadata,
    )


def deadline_too_short(
    model: str, estimate_s: float, remaining_s: float, basis: dict[str, str] | None = None
) -> RouterError:
    """`basis`: what the estimate rests on (drain rate, work ahead, correction), for the caller and the log."""
    return RouterError(
        DEADLINE_TOO_SHORT,
        f"model {model!r} needs about {estimate_s * 1000:.0f} ms for this request; "
        f"the deadline leaves {max(remaining_s, 0) * 1000:.0f} ms",
        metadata={"model": model, "estimate_ms": f"{estimate_s * 1000:.0f}", **(basis or {})},
    )


def deadline_expired(model: str) -> RouterError:
    return RouterError(
        DEADLINE_EXPIRED,
        f"the deadline passed while the request waited for model {model!r}; it was not run",
        metadata={"model": model},
    )
