"""Admission: what a model's scheduler lets in, and how it says no.

Work is counted in tokens and in requests. A model's scheduler admits a request while its queue (work
not yet sent to Triton) stays within `max_queued_tokens` and `max_queued_requests`; past that the call
fails at once with RESOURCE_EXHAUSTED and a RetryInfo delay: the tokens that must drain first divided
by the rate the model has been measured to drain them. A request too big for the queue bound is still
admitted when the queue is empty, so no request is refused for its size alone (that is what the
per-request caps are for).

Tenants (call metadata `x-tenant-id`) have token buckets in requests/s and tokens/s; a tenant over its
rate fails fast the same way, with the delay until its bucket holds enough. Fair service *between*
tenants, once admitted, is the scheduler's job (scheduler.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from token_bucket import Limiter, MemoryStorage

from router.core.errors import ErrorKind, RouterError

QUEUE_FULL = "QUEUE_FULL"
TENANT_RATE_LIMITED = "TENANT_RATE_LIMITED"
DEADLINE_TOO_SHORT = "DEADLINE_TOO_SHORT"
DEADLINE_EXPIRED = "DEADLINE_EXPIRED"
REASONS = (QUEUE_FULL, TENANT_RATE_LIMITED, DEADLINE_TOO_SHORT, DEADLINE_EXPIRED)

MIN_RETRY_S = 0.05
MAX_RETRY_S = 30.0


@dataclass(frozen=True)
class AdmissionConfig:
    enabled: bool = True
    """Off: every request is queued whatever the queue holds, and kept there past its deadline until
    its caller goes away: a plain proxy, for comparison only."""
    max_queued_tokens: int | None = None
    """Tokens waiting per model; unset: 4 x the model's max batch size x its max sequence length."""
    max_queued_requests: int = 256
    """Requests waiting per model."""
    shed_on_deadline: bool = True
    """Refuse at once a request whose deadline the measured drain rate says it cannot meet: the work
    ahead of it (in flight, its tenant's queue, a fair share of the others') would take too long."""

    def queue_tokens_for(self, max_batch_size: int, max_sequence_length: int) -> int:
        return self.max_queued_tokens or 4 * max_batch_size * max_sequence_length


@dataclass(frozen=True)
class TenantLimits:
    requests_per_s: float | None = None
    tokens_per_s: float | None = None
    burst_s: float = 2.0
    """Bucket capacity, in seconds of rate: how long a tenant may burst above its rate."""


def retry_delay(excess_tokens: float, rate: float | None) -> float:
    if not rate:
        return 1.0
    return min(MAX_RETRY_S, max(MIN_RETRY_S, excess_tokens / rate))


class DrainRate:
    """Tokens per second the model completes while it is busy, smoothed over spans of busy time.

    Only busy time counts, so a lightly loaded model is not mistaken for a slow one. Samples span at
    least `min_span_s`: completions can arrive in clumps (Triton may hand several queued batches to one
    model execution and answer them together), and a rate over one clump's gap would be nonsense.
    """

    def __init__(self, smoothing: float = 0.3, min_span_s: float = 0.5) -> None:
        self.smoothing = smoothing
        self.min_span_s = min_span_s
        self.rate: float | None = None
        self._busy_since: float | None = None
        self._busy_s = 0.0
        self._tokens = 0

    def started(self, now: float) -> None:
        """A batch left; call before counting it in flight."""
        if self._busy_since is None:
            self._busy_since = now

    def finished(self, tokens: int, now: float, still_inflight: int) -> None:
        """A batch of `tokens` came back (0: it failed), leaving `still_inflight` batches out."""
        self._tokens += tokens
        span = self._busy_s + (now - self._busy_since if self._busy_since is not None else 0.0)
        if still_inflight == 0 and self._busy_since is not None:
            self._busy_s, self._busy_since = span, None
        if span >= self.min_span_s and self._tokens:
            sample = self._tokens / span
            self.rate = sample if self.rate is None else (1 - self.smoothing) * self.rate + self.smoothing * sample
            self._tokens, self._busy_s = 0, 0.0
            if self._busy_since is not None:
                self._busy_since = now


class Calibration:
    """How far off the drain-rate estimates run: the ratio of actual to estimated time of admitted
    requests, smoothed. Estimates are scaled by its mean plus one deviation, so most admitted requests
    finish within their deadline, whatever the model's per-batch overheads and packing under load."""

    def __init__(self, smoothing: float = 0.1) -> None:
        self.smoothing = smoothing
        self.mean = 1.0
        self.deviation = 0.0

    @property
    def factor(self) -> float:
        return min(4.0, max(1.0, self.mean + self.deviation))

    def observe(self, estimate_s: float, actual_s: float) -> None:
        if estimate_s <= 0:
            return
        ratio = min(10.0, actual_s / estimate_s)
        self.deviation += self.smoothing * (abs(ratio - self.mean) - self.deviation)
        self.mean += self.smoothing * (ratio - self.mean)


@dataclass
class TenantLimiter:
    """Token buckets per tenant, in requests/s and tokens/s. Shared by every model's scheduler."""

    default: TenantLimits = field(default_factory=TenantLimits)
    overrides: dict[str, TenantLimits] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._storage = MemoryStorage()
        self._buckets: dict[tuple[str, str], tuple[Limiter, float, int] | None] = {}

    def _bucket(self, tenant: str, kind: str) -> tuple[Limiter, float, int] | None:
        """The tenant's limiter for `kind` with its rate and capacity, or None when unlimited."""
        key = (tenant, kind)
        if key not in self._buckets:
            limits = self.overrides.get(tenant, self.default)
            rate = limits.requests_per_s if kind == "requests" else limits.tokens_per_s
            capacity = max(1, int(rate * limits.burst_s)) if rate else 0
            self._buckets[key] = (Limiter(rate, capacity, self._storage), rate, capacity) if rate else None
        return self._buckets[key]

    def charge(self, tenant: str, tokens: int) -> None:
        """Take one request and `tokens` tokens from the tenant's buckets, or raise OVERLOADED."""
        for kind, amount in (("requests", 1), ("tokens", tokens)):
            bucket = self._bucket(tenant, kind)
            if bucket is None:
                continue
            limiter, rate, capacity = bucket
            # A request bigger than the whole bucket takes a full bucket: slowed, never refused outright.
            amount = min(amount, capacity)
            key = f"{tenant}\0{kind}"
            if not limiter.consume(key, amount):
                missing = amount - self._storage.get_token_count(key)
                raise RouterError(
                    ErrorKind.OVERLOADED,
                    TENANT_RATE_LIMITED,
                    f"tenant {tenant or '(none)'!r} is over its {kind}/s rate",
                    retry_after_s=retry_delay(missing, rate),
                    metadata={"tenant": tenant, "limit": f"{rate:g} {kind}/s"},
                )


def queue_full(model: str, tokens: int, queued_tokens: int, queued_requests: int, excess: float, rate) -> RouterError:
    return RouterError(
        ErrorKind.OVERLOADED,
        QUEUE_FULL,
        f"model {model!r} is busy: {queued_requests} requests and {queued_tokens} tokens are waiting",
        retry_after_s=retry_delay(excess, rate),
        metadata={"model": model, "queued_tokens": str(queued_tokens), "request_tokens": str(tokens)},
    )


def deadline_too_short(model: str, estimate_s: float, remaining_s: float) -> RouterError:
    return RouterError(
        ErrorKind.DEADLINE_EXCEEDED,
        DEADLINE_TOO_SHORT,
        f"model {model!r} needs about {estimate_s * 1000:.0f} ms for this request; "
        f"the deadline leaves {max(remaining_s, 0) * 1000:.0f} ms",
        metadata={"model": model, "estimate_ms": f"{estimate_s * 1000:.0f}"},
    )


def deadline_expired(model: str) -> RouterError:
    return RouterError(
        ErrorKind.DEADLINE_EXCEEDED,
        DEADLINE_EXPIRED,
        f"the deadline passed while the request waited for model {model!r}; it was not run",
        metadata={"model": model},
    )
