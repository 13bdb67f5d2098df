"""Tenant rates (call metadata `x-tenant-id`), in requests/s and tokens/s: admission's rule 4.

One router counts them in its own memory (token buckets, `LocalTenantLimiter`). Several routers over one
fleet count them in a store they share (`FleetTenantLimiter` over a `SharedCounts`, Redis in
adapters/redis), so a tenant limited to R gets R from the fleet, not R per router. When the store does
not answer (down, or slower than its timeout), no call fails for it: each router counts locally again, at
its share of the rate (R divided by the routers last seen alive in the store, each router process
announcing itself there every few seconds), until the store answers again. In the seconds around such a
switch a tenant may get up to a burst more than its rate (the local buckets start full), or be refused
early for what the store had counted, never both at once for long.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import structlog
from cachetools import LRUCache
from token_bucket import Limiter, MemoryStorage

from router.core import errors
from router.core.errors import TENANT_RATE_LIMITED, RouterError
from router.observability import metrics

log = structlog.get_logger(__name__)

MIN_RETRY_S = 0.05
MAX_RETRY_S = 30.0

KINDS = ("requests", "tokens")


def retry_delay(excess_tokens: float, rate: float | None) -> float:
    if not rate:
        return 1.0
    return min(MAX_RETRY_S, max(MIN_RETRY_S, excess_tokens / rate))


@dataclass(frozen=True)
class TenantLimits:
    requests_per_s: float | None = None
    tokens_per_s: float | None = None
    burst_s: float = 2.0
    """Bucket capacity, in seconds of rate: how long a tenant may burst above its rate."""

    def rate(self, kind: str) -> float | None:
        return self.requests_per_s if kind == "requests" else self.tokens_per_s


@dataclass(frozen=True)
class TenantRates:
    """Every tenant's limits: a default, and named tenants' own."""

    default: TenantLimits = field(default_factory=TenantLimits)
    overrides: dict[str, TenantLimits] = field(default_factory=dict)

    def of(self, tenant: str) -> TenantLimits:
        return self.overrides.get(tenant, self.default)

    @property
    def any(self) -> bool:
        """Whether any tenant has a rate at all (none: nothing to count)."""
        return any(limits.requests_per_s or limits.tokens_per_s for limits in (self.default, *self.overrides.values()))

    def shared_by(self, routers: int) -> TenantRates:
        """Each of `routers` routers' share of these rates."""
        if routers <= 1:
            return self

        def share(limits: TenantLimits) -> TenantLimits:
            return TenantLimits(
                limits.requests_per_s / routers if limits.requests_per_s else None,
                limits.tokens_per_s / routers if limits.tokens_per_s else None,
                limits.burst_s,
            )

        return TenantRates(share(self.default), {name: share(limits) for name, limits in self.overrides.items()})


def over_rate(tenant: str, kind: str, rate: float, missing: float) -> RouterError:
    return RouterError(
        TENANT_RATE_LIMITED,
        f"tenant {errors.echo(tenant) if tenant else '(none)'} is over its {kind}/s rate",
        retry_after_s=retry_delay(missing, rate),
        metadata={"tenant": errors.clip(tenant), "limit": f"{rate:g} {kind}/s"},
    )


class TenantLimiter(Protocol):
    async def charge(self, tenant: str, tokens: int) -> None:
        """Take one request and `tokens` tokens from the tenant's rates, or raise TENANT_RATE_LIMITED."""


class LocalTenantLimiter:
    """Token buckets per tenant in this process. Shared by every model's scheduler."""

    def __init__(self, rates: TenantRates, max_tenants: int = 10_000) -> None:
        self.rates = rates
        self.max_tenants = max_tenants
        """Tenants whose buckets are kept (the least recently seen go first): with authentication off a
        caller can name any tenant, and the map must not grow with them. A tenant forgotten starts full."""
        self._buckets: LRUCache[tuple[str, str], tuple[Limiter, MemoryStorage, float, int] | None] = LRUCache(
            2 * max_tenants
        )

    def _bucket(self, tenant: str, kind: str) -> tuple[Limiter, MemoryStorage, float, int] | None:
        """The tenant's limiter for `kind` with its storage, rate and capacity, or None when unlimited."""
        key = (tenant, kind)
        if key not in self._buckets:
            limits = self.rates.of(tenant)
            rate = limits.rate(kind)
            capacity = max(1, int(rate * limits.burst_s)) if rate else 0
            storage = MemoryStorage()  # one per bucket: a forgotten tenant's state goes with it
            self._buckets[key] = (Limiter(rate, capacity, storage), storage, rate, capacity) if rate else None
        return self._buckets[key]

    def take(self, tenant: str, tokens: int) -> None:
        """`charge`, on the spot (no store to wait for)."""
        for kind, amount in (("requests", 1), ("tokens", tokens)):
            bucket = self._bucket(tenant, kind)
            if bucket is None:
                continue
            limiter, storage, rate, capacity = bucket
            # A request bigger than the whole bucket takes a full bucket: slowed, never refused outright.
            amount = min(amount, capacity)
            key = f"{tenant}\0{kind}"
            if not limiter.consume(key, amount):
                raise over_rate(tenant, kind, rate, amount - storage.get_token_count(key))

    async def charge(self, tenant: str, tokens: int) -> None:
        self.take(tenant, tokens)


class SharedCounts(Protocol):
    """Counts kept where every router sees them (adapters/redis/rate_limits.py)."""

    @property
    def answering(self) -> bool:
        """Whether the store answered its last request (False: count locally, do not wait on it)."""

    @property
    def routers(self) -> int:
        """Router processes last seen alive through the store (at least 1)."""

    async def hit(self, key: str, amount: int, limit: int, window_s: int, exact: bool = False) -> bool | None:
        """Count `amount` against `limit` per `window_s` under `key`: True if within it, False if over
        it, None if the store did not answer in time (it then reports not answering). `exact`: count in
        a moving window (requests, one unit each), else a sliding window counter (tokens)."""


class FleetTenantLimiter:
    """Tenant rates counted in a shared store, so they hold across every router of the fleet; each
    router's share counted locally while the store does not answer."""

    def __init__(self, rates: TenantRates, store: SharedCounts, max_tenants: int = 10_000) -> None:
        self.rates = rates
        self.store = store
        self.max_tenants = max_tenants
        self._fallback: tuple[int, LocalTenantLimiter] | None = None
        self._counting_locally = False

    async def charge(self, tenant: str, tokens: int) -> None:
        if self.store.answering:
            limits = self.rates.of(tenant)
            for kind, amount in (("requests", 1), ("tokens", tokens)):
                rate = limits.rate(kind)
                if not rate:
                    continue
                window_s = max(1, round(limits.burst_s))
                limit = max(1, round(rate * window_s))
                amount = min(amount, limit)  # bigger than the whole window: slowed, never refused outright
                within = await self.store.hit(f"{tenant}\0{kind}", amount, limit, window_s, kind == "requests")
                if within is None:
                    break  # the store went quiet: this request is counted locally
                if not within:
                    raise over_rate(tenant, kind, rate, amount)
            else:
                self._back_to_store()
                return
        self._local().take(tenant, tokens)

    def _local(self) -> LocalTenantLimiter:
        """This router's share of the rates, counted here (rebuilt when the number of routers changes)."""
        routers = max(1, self.store.routers)
        if not self._counting_locally:
            self._counting_locally = True
            log.warning("tenant_limits.counting_locally", routers=routers, share=f"1/{routers}")
        metrics.TENANT_LIMITS_LOCAL.inc()
        if self._fallback is None or self._fallback[0] != routers:
            self._fallback = (routers, LocalTenantLimiter(self.rates.shared_by(routers), self.max_tenants))
        return self._fallback[1]

    def _back_to_store(self) -> None:
        if self._counting_locally:
            self._counting_locally = False
            self._fallback = None  # its buckets start full next time: the store holds the truth now
            log.info("tenant_limits.counting_in_store")


def limiter_for(rates: TenantRates, store: SharedCounts | None) -> TenantLimiter | None:
    """The tenant limiter for these rates: none without rates, shared with a store, else local."""
    if not rates.any:
        return None
    return LocalTenantLimiter(rates) if store is None else FleetTenantLimiter(rates, store)
