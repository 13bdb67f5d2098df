"""Shard choice, passive health and the retry budget (router/shards/picking.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.shards.picking import HealthConfig, RetryBudget, Shard, ShardSet


def fleet(*addresses: str, model: str = "m", version: str = "1", seed: int = 0) -> ShardSet:
    shards = ShardSet(rng=random.Random(seed))
    shards.update(addresses)
    for shard in shards.shards.values():
        shard.ready = True
        shard.models = {model: frozenset({version})}
    return shards


def test_update_keeps_known_shards_and_reports_changes():
    shards = fleet("a", "b")
    a = shards.shards["a"]
    a.outstanding_tokens = 7
    added, removed = shards.update(["a", "c"])
    assert [s.address for s in added] == ["c"] and [s.address for s in removed] == ["b"]
    assert shards.shards["a"] is a and a.outstanding_tokens == 7


def test_only_usable_shards_holding_the_version_are_candidates():
    shards = fleet("a", "b", "c", "d")
    shards.shards["b"].ready = False
    shards.shards["c"].models = {"m": frozenset({"2"})}
    shards.shards["d"].ejected_until = 10.0
    assert [s.address for s in shards.candidates("m", "1", now=5.0)] == ["a"]
    assert {s.address for s in shards.candidates("m", "1", now=11.0)} == {"a", "d"}
    assert shards.candidates("other", "", now=5.0) == []
    assert [s.address for s in shards.candidates("m", "", now=5.0, exclude=["a"])] == ["c"]


def test_two_choices_prefer_the_shard_that_drains_first():
    shards = fleet("a", "b")
    a, b = shards.shards["a"], shards.shards["b"]
    a.seconds_per_token = b.seconds_per_token = 0.001
    shards.started(a, 1000)
    assert all(shards.pick("m", "1", 100, now=0.0) is b for _ in range(20))
    # b is three times slower per token: 400 outstanding there costs more than a's 1,000.
    b.seconds_per_token = 0.003
    shards.started(b, 400)
    assert shards.pick("m", "1", 100, now=0.0) is a


def test_a_slow_shard_gets_proportionally_less_work():
    """Simulated: batches of 100 tokens arrive; each shard answers at its own speed."""
    shards = fleet("fast", "slow", seed=1)
    speed = {"fast": 0.001, "slow": 0.003}
    clock, running, served = 0.0, [], Counter()
    for _ in range(3000):
        clock += 0.05  # 2,000 tokens/s offered; together the shards drain about 1,333 + 333 ... ample
        for end, shard in list(running):
            if end <= clock:
                running.remove((end, shard))
                shards.succeeded(shard, 100, speed[shard.address] * 100 * max(1, shard.inflight), clock)
        shard = shards.pick("m", "1", 100, clock)
        shards.started(shard, 100)
        served[shard.address] += 1
        running.append((clock + speed[shard.address] * 100 * shard.inflight, shard))
    assert served["fast"] > 2 * served["slow"] > 0


def test_a_new_shard_is_tried_at_once():
    shards = fleet("a", "b")
    shards.shards["a"].seconds_per_token = 0.01
    shards.started(shards.shards["a"], 50)
    assert shards.pick("m", "1", 10, now=0.0).address == "b"


def test_failures_eject_with_doubling_backoff_until_discovery_sees_the_shard_again():
    shards = ShardSet(HealthConfig(eject_base_s=0.5, eject_max_s=1.5))
    shards.update(["a", "b"])
    for shard in shards.shards.values():
        shard.ready, shard.models = True, {"m": frozenset({"1"})}
    a = shards.shards["a"]
    backoffs = []
    for now in (0.0, 10.0, 20.0, 30.0):
        shards.started(a, 10)
        shards.failed(a, 10, now)
        backoffs.append(a.ejected_until - now)
        a.ready = True  # discovery found it answering
    assert backoffs == [0.5, 1.0, 1.5, 1.5]
    assert a.outstanding_tokens == 0 and a.inflight == 0
    assert [s.address for s in shards.candidates("m", "1", now=30.1)] == ["b"]
    a.ready = False
    assert [s.address for s in shards.candidates("m", "1", now=40.0)] == ["b"]  # backoff over, not seen yet
    a.ready = True
    shards.started(a, 10)
    shards.succeeded(a, 10, 0.01, now=40.0)
    assert a.failures == 0 and {s.address for s in shards.candidates("m", "1", now=40.0)} == {"a", "b"}


def test_a_shard_far_slower_than_the_others_is_ejected():
    shards = fleet("a", "b", "c")
    for address in ("b", "c"):
        shards.shards[address].seconds_per_token = 0.001
    a = shards.shards["a"]
    shards.started(a, 100)
    shards.succeeded(a, 100, 2.0, now=0.0)  # 20 ms per token: 20x the others
    assert a.ejected_until > 0.0 and not a.usable(0.0)


def test_when_no_shard_is_usable_those_holding_the_model_are_tried():
    shards = fleet("a", "b")
    for shard in shards.shards.values():
        shard.ready = False
    assert shards.pick("m", "1", 10, now=0.0) is not None
    assert shards.pick("m", "1", 10, now=0.0, exclude=["a"]).address == "b"
    assert shards.pick("m", "1", 10, now=0.0, exclude=["a", "b"]) is None
    assert shards.pick("other", "", 10, now=0.0) is None


def test_retry_budget_is_a_share_of_first_attempts_plus_a_reserve():
    budget = RetryBudget(ratio=0.1, reserve=2)
    assert budget.try_retry() and budget.try_retry() and not budget.try_retry()
    for _ in range(10):
        budget.attempted()
    assert budget.try_retry() and not budget.try_retry()
    for _ in range(1000):
        budget.attempted()
    assert budget.balance == 2  # the reserve caps what quiet times save up


@pytest.mark.parametrize("bad", [dict(eject_base_s=0), dict(eject_base_s=2, eject_max_s=1), dict(slow_factor=1)])
def test_health_config_checks_itself(bad):
    with pytest.raises(ValueError):
        HealthConfig(**bad)


def test_holds_any_version_when_none_is_pinned():
    shard = Shard("a", models={"m": frozenset({"1", "2"})})
    assert shard.holds("m") and shard.holds("m", "2") and not shard.holds("m", "3") and not shard.holds("x")


def test_one_caller_at_a_time_is_spread_over_shards_of_about_equal_speed():
    shards = fleet("a", "b", seed=3)
    shards.shards["a"].seconds_per_token, shards.shards["b"].seconds_per_token = 0.00100, 0.00101
    chosen = Counter(shards.pick("m", "1", 100, now=0.0).address for _ in range(200))
    assert chosen["a"] > 50 and chosen["b"] > 50


def test_a_failed_shard_is_measured_afresh_when_it_comes_back():
    shards = fleet("a", "b")
    a = shards.shards["a"]
    a.seconds_per_token = 0.5
    shards.started(a, 10)
    shards.failed(a, 10, now=0.0)
    assert a.seconds_per_token is None


def test_round_robin_takes_each_usable_shard_in_turn_whatever_its_load():
    shards = fleet("a", "b", "c")
    shards.balancing = "round_robin"
    shards.started(shards.shards["a"], 10_000)
    picks = [shards.pick("m", "1", 10, now=0.0).address for _ in range(6)]
    assert sorted(picks) == ["a", "a", "b", "b", "c", "c"]
    with pytest.raises(ValueError):
        ShardSet(balancing="fastest")


def test_at_capacity_a_slower_shard_takes_what_the_faster_one_has_no_slot_for():
    shards = fleet("fast", "slow")
    shards.max_inflight = 2
    fast, slow = shards.shards["fast"], shards.shards["slow"]
    fast.seconds_per_token, slow.seconds_per_token = 0.001, 0.003
    assert shards.pick("m", "1", 500, now=0.0) is fast
    shards.started(fast, 500)
    assert shards.pick("m", "1", 500, now=0.0) is fast  # 1,000 x 1 ms beats 500 x 3 ms
    shards.started(fast, 500)
    assert shards.pick("m", "1", 500, now=0.0) is slow  # fast is full
    shards.started(slow, 500)
    shards.started(slow, 500)
    assert shards.pick("m", "1", 500, now=0.0) is fast  # all full: by cost again


def test_a_shard_measured_slow_long_ago_is_tried_again():
    shards = fleet("a", "b")
    a, b = shards.shards["a"], shards.shards["b"]
    shards.started(a, 100)
    shards.succeeded(a, 100, 1.0, now=0.0)  # 10 ms per token, once
    shards.started(b, 100)
    shards.succeeded(b, 100, 0.1, now=0.0)  # 1 ms per token
    assert all(shards.pick("m", "1", 100, now=1.0) is b for _ in range(20))
    b.measured_at = 100.0  # b kept being measured; a was not, for longer than stale_after_s
    assert {shards.pick("m", "1", 100, now=100.0).address for _ in range(50)} == {"a", "b"}
