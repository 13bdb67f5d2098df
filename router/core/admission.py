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
    """Off: every request is queued, whatever the queue holds (for comparison only)."""
    max_queued_tokens: int | None = None
    """Tokens waiting per model; unset: 4 x the model's max batch size x its max sequence length."""
    max_queued_requests: int = 256
    """Requests waiting per model."""
    shed_on_deadline: bool = True
    """Refuse at once a request whose deadline the queue's measured drain rate says it cannot meet."""

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
    """Tokens per second the model completes while it is busy: an EWMA over batch completions.

    Only busy time counts, so a lightly loaded model is not mistaken for a slow one.
    """

    def __init__(self, smoothing: float = 0.2) -> None:
        self.smoothing = smoothing
        self.rate: float | None = None
        self._busy_since: float | None = None
        self._last_done: float | None = None

    def started(self, now: float) -> None:
        """A batch left; call before counting it in flight."""
        if self._busy_since is None:
            self._busy_since = now

    def finished(self, tokens: int, now: float, still_inflight: int) -> None:
        """A batch of `tokens` came back (0: it failed): the time since the last completion, or since
        the model got busy, produced them."""
        begin = self._busy_since if self._last_done is None else self._last_done
        if tokens and begin is not None and now > begin:
            sample = tokens / (now - begin)
            self.rate = sample if self.rate is None else (1 - self.smoothing) * self.rate + self.smoothing * sample
        if still_inflight:
            self._last_done = now
        else:
            self._busy_since = self._last_done = None


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
