"""Tenant rates in one router (token buckets) and across a fleet of routers (a shared store, each
router's share counted locally while the store does not answer). The store here is a fake behind the
`SharedCounts` interface; tests/e2e/test_fleet.py runs the real one, Redis, under two routers."""

from __future__ import annotations

import pytest

from router.core.errors import RouterError
from router.core.scheduling.tenant_limits import (
    FleetTenantLimiter,
    LocalTenantLimiter,
    TenantLimits,
    TenantRates,
    limiter_for,
)
from router.observability import metrics


class Counts:
    """A shared store's counts in a dict (fixed windows, enough for the logic under test); `answering`
    False makes every hit time out."""

    def __init__(self, routers: int = 1) -> None:
        self.answering = True
        self.routers = routers
        self.counted: dict[str, int] = {}
        self.hits = 0

    async def hit(self, key: str, amount: int, limit: int, window_s: int, exact: bool = False) -> bool | None:
        self.hits += 1
        if not self.answering:
            return None
        if self.counted.get(key, 0) + amount > limit:
            return False
        self.counted[key] = self.counted.get(key, 0) + amount
        return True


def test_the_tenant_map_stays_bounded_when_callers_rotate_tenant_ids():
    limiter = LocalTenantLimiter(TenantRates(TenantLimits(requests_per_s=1, burst_s=1)), max_tenants=100)
    for i in range(5_000):
        limiter.take(f"rotating-{i}", 1)
    assert len(limiter._buckets) <= 2 * 100
    limiter.take("steady", 1)
    with pytest.raises(RouterError):  # a tenant still remembered keeps its (spent) bucket
        limiter.take("steady", 1)


def test_no_rates_no_limiter_and_a_store_makes_it_shared():
    assert limiter_for(TenantRates(), Counts()) is None
    rates = TenantRates(overrides={"search": TenantLimits(requests_per_s=5)})
    assert isinstance(limiter_for(rates, None), LocalTenantLimiter)
    assert isinstance(limiter_for(rates, Counts()), FleetTenantLimiter)


async def test_rates_are_counted_in_the_store_one_window_of_burst_s():
    counts = Counts()
    limiter = FleetTenantLimiter(TenantRates(TenantLimits(requests_per_s=3, tokens_per_s=100, burst_s=2)), counts)
    for _ in range(6):  # 3/s over a 2 s window
        await limiter.charge("a", 10)
    with pytest.raises(RouterError) as refused:
        await limiter.charge("a", 10)
    assert refused.value.reason == "TENANT_RATE_LIMITED" and refused.value.retry_after_s > 0
    assert counts.counted == {"a\0requests": 6, "a\0tokens": 60}
    await limiter.charge("b", 10)  # another tenant's own count
    with pytest.raises(RouterError) as refused:
        await limiter.charge("c", 190)  # 190 of 200 tokens, then over
        await limiter.charge("c", 20)
    assert "tokens/s" in refused.value.message


async def test_a_request_bigger_than_the_window_takes_it_all_and_is_not_refused_outright():
    counts = Counts()
    limiter = FleetTenantLimiter(TenantRates(TenantLimits(tokens_per_s=100, burst_s=1)), counts)
    await limiter.charge("a", 5_000)
    assert counts.counted["a\0tokens"] == 100


async def test_while_the_store_does_not_answer_each_router_counts_its_share_then_goes_back():
    counts = Counts(routers=4)
    limiter = FleetTenantLimiter(TenantRates(TenantLimits(requests_per_s=10, burst_s=2)), counts)
    await limiter.charge("a", 1)
    counts.answering = False
    local_before = metrics.TENANT_LIMITS_LOCAL._value.get()
    admitted = 0
    with pytest.raises(RouterError):
        for _ in range(100):
            await limiter.charge("a", 1)
            admitted += 1
    assert admitted == 5  # a quarter of 10/s, bucket of 2 s: this router's share, not the fleet's 20
    assert metrics.TENANT_LIMITS_LOCAL._value.get() - local_before == admitted + 1
    hits = counts.hits
    counts.answering = True
    await limiter.charge("a", 1)  # counted in the store again
    assert counts.hits == hits + 1 and counts.counted["a\0requests"] == 2


async def test_a_store_that_goes_quiet_mid_charge_counts_that_request_locally():
    counts = Counts(routers=2)
    limiter = FleetTenantLimiter(TenantRates(TenantLimits(requests_per_s=10)), counts)

    async def quiet(key, amount, limit, window_s, exact=False):
        counts.answering = False
        return None

    counts.hit = quiet
    await limiter.charge("a", 1)  # not failed: counted here
    assert limiter._fallback is not None and limiter._fallback[0] == 2
