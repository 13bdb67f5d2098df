"""Which shard runs a batch, and whether a failed batch may run again elsewhere.

A shard is one model server. Discovery (adapters/triton/fleet.py) tells each `Shard` whether the
server answers and is ready, and which model versions it holds; the backend tells it when a batch
starts and ends. From that:

- `ShardSet.pick` chooses by power of two choices: two random shards among those that are usable, hold
  the model's version and have a free slot (fewer than `max_inflight` batches), and of the two the one
  whose outstanding work would drain first: the tokens it has in flight (exact: the router tokenized
  them) plus this batch's, times the seconds per token it has been measured at. A slow shard is thus
  sent proportionally less, and at capacity it takes what the faster ones have no slot for.
- Passive health: a batch that fails on a shard's account (connection lost, server gone) ejects the
  shard for a backoff that doubles with each failure in a row (`HealthConfig`); it stays out until the
  backoff has passed *and* discovery has found it answering again. A shard whose seconds per token is
  far above the others' is ejected the same way. Discovery's verdict (ready or not) is the active part.
- `RetryBudget`: retries are allowed at a fraction of first attempts (about 10%), plus a small reserve,
  so a sick fleet is not stormed with retries.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from router.core.scheduling.fleet_share import ALONE, FleetShare

LEAST_WORK = "least_work"
"""Power of two choices on outstanding tokens x seconds per token (the default)."""
ROUND_ROBIN = "round_robin"
"""Each usable shard in turn, whatever it has outstanding (benchmarks compare with it)."""
BALANCING = (LEAST_WORK, ROUND_ROBIN)


@dataclass(frozen=True)
class HealthConfig:
    eject_base_s: float = 0.5
    """First ejection of a failing shard; doubled for each further failure in a row."""
    eject_max_s: float = 10.0
    """Longest ejection."""
    slow_factor: float = 10.0
    """A shard this many times slower per token than the median of the others is ejected. Generous: the
    answer time includes the shard's own queue, so a shard merely a few times slower, and busy, reaches
    several times the others' (and least_work already sends it less)."""
    smoothing: float = 0.3
    """Weight of the newest batch in a shard's seconds per token (exponential moving average)."""
    stale_after_s: float = 5.0
    """A shard's speed measured longer ago than this is forgotten: the shard is tried again as if new (a
    shard measured slow once, then sent nothing, would otherwise never be measured again)."""
    tie_ratio: float = 1.25
    """Two shards whose costs are within this ratio are equal choices (either is taken, at random)."""

    def __post_init__(self) -> None:
        if not 0 < self.eject_base_s <= self.eject_max_s:
            raise ValueError("need 0 < eject_base_s <= eject_max_s")
        if self.slow_factor <= 1:
            raise ValueError("slow_factor must be above 1")
        if self.stale_after_s <= 0:
            raise ValueError("stale_after_s must be positive")
        if not 0 < self.smoothing <= 1:
            raise ValueError("smoothing must be in (0, 1]")
        if self.tie_ratio < 1:
            raise ValueError("tie_ratio must be at least 1")


@dataclass
class Shard:
    address: str
    ready: bool = False
    """Discovery's last word: the server answered and is ready."""
    models: dict[str, frozenset[str]] = field(default_factory=dict)
    """Model name -> its versions ready on this shard."""
    outstanding_tokens: int = 0
    """Tokens of batches sent to this shard and not answered yet."""
    inflight: int = 0
    seconds_per_token: float | None = None
    """Measured answer time per token of its batches (unknown until it has answered one)."""
    measured_at: float = 0.0
    ejected_until: float = 0.0
    failures: int = 0
    """Failures in a row on the shard's account."""
    answered: int = 0
    failed: int = 0

    def holds(self, model: str, version: str = "") -> bool:
        versions = self.models.get(model)
        return versions is not None and (not version or version in versions)

    def usable(self, now: float) -> bool:
        return self.ready and now >= self.ejected_until


class ShardSet:
    def __init__(
        self,
        health: HealthConfig | None = None,
        rng: random.Random | None = None,
        balancing: str = LEAST_WORK,
        max_inflight: int | None = None,
        share: FleetShare = ALONE,
    ) -> None:
        if balancing not in BALANCING:
            raise ValueError(f"balancing must be one of {', '.join(BALANCING)}")
        self.health = health or HealthConfig()
        self.balancing = balancing
        self.max_inflight = max_inflight
        """Batches in flight per shard that least_work aims for (this router's share of it, with other
        routers in front of the same shards): a shard below it is preferred to one at it."""
        self.share = share
        self._rng = rng or random.Random()
        self._turn = 0
        self.shards: dict[str, Shard] = {}

    def update(self, addresses: Iterable[str]) -> tuple[list[Shard], list[Shard]]:
        """Make the set these addresses; return (added, removed). A removed shard's batches in flight
        still finish: they hold the shard itself."""
        wanted = list(dict.fromkeys(addresses))
        removed = [shard for address, shard in self.shards.items() if address not in wanted]
        added = {address: Shard(address) for address in wanted if address not in self.shards}
        self.shards = {address: self.shards.get(address) or added[address] for address in wanted}
        return list(added.values()), removed

    def holding(self, model: str, version: str = "") -> list[Shard]:
        """Shards that hold the model's version, usable or not."""
        return [shard for shard in self.shards.values() if shard.holds(model, version)]

    def candidates(self, model: str, version: str, now: float, exclude: Iterable[str] = ()) -> list[Shard]:
        skip = set(exclude)
        return [
            shard
            for shard in self.shards.values()
            if shard.address not in skip and shard.usable(now) and shard.holds(model, version)
        ]

    def pick(self, model: str, version: str, tokens: int, now: float, exclude: Iterable[str] = ()) -> Shard | None:
        """The shard for a batch of `tokens` tokens, or None when no shard (not excluded) holds the model.

        When none that holds it is usable (all ejected or not ready), all that hold it are candidates
        (a "panic" choice, as Envoy makes): a shard that is back gets the work at once, and a dead one
        fails fast."""
        shards = self.candidates(model, version, now, exclude)
        if not shards:
            skip = set(exclude)
            shards = [shard for shard in self.holding(model, version) if shard.address not in skip]
        if len(shards) <= 1:
            return shards[0] if shards else None
        if self.balancing == ROUND_ROBIN:
            self._turn += 1
            return shards[self._turn % len(shards)]
        if self.max_inflight:
            # A shard with a free slot first: at capacity a slower shard takes the overflow rather than the
            # faster one queueing more, so every shard's capacity is used.
            most = self.share.of(self.max_inflight)
            shards = [s for s in shards if s.inflight < most] or shards
            if len(shards) == 1:
                return shards[0]
        first, second = self._rng.sample(shards, 2)
        a, b = self.cost(first, tokens, now), self.cost(second, tokens, now)
        if max(a, b) <= self.health.tie_ratio * min(a, b):
            # Near enough to call even: either will do, and both keep being measured (with one caller at a
            # time, the shard measured a hair faster would otherwise take every batch).
            return first
        return first if a < b else second

    def cost(self, shard: Shard, tokens: int, now: float) -> float:
        """Seconds until the shard would have answered its outstanding work and this batch."""
        return (shard.outstanding_tokens + tokens) * self._speed(shard, now)

    def _fresh(self, shard: Shard, now: float) -> bool:
        return shard.seconds_per_token is not None and now - shard.measured_at <= self.health.stale_after_s

    def _speed(self, shard: Shard, now: float) -> float:
        if self._fresh(shard, now):
            return shard.seconds_per_token
        known = [s.seconds_per_token for s in self.shards.values() if self._fresh(s, now)]
        # A new shard (or one not heard from lately) is taken to be as fast as the fastest known one, so
        # it is tried at once.
        return min(known) if known else 1.0

    def started(self, shard: Shard, tokens: int) -> None:
        shard.outstanding_tokens += tokens
        shard.inflight += 1

    def ended(self, shard: Shard, tokens: int) -> None:
        """A batch ended without a verdict on the shard (cancelled, or refused for the caller's reasons)."""
        shard.outstanding_tokens -= tokens
        shard.inflight -= 1

    def succeeded(self, shard: Shard, tokens: int, elapsed_s: float, now: float) -> None:
        self.ended(shard, tokens)
        shard.answered += 1
        shard.failures = 0
        per_token = elapsed_s / max(1, tokens)
        alpha = self.health.smoothing
        previous = shard.seconds_per_token
        fresh = previous is not None and now - shard.measured_at <= self.health.stale_after_s
        shard.seconds_per_token = alpha * per_token + (1 - alpha) * previous if fresh else per_token
        shard.measured_at = now
        others = [
            s.seconds_per_token
            for s in self.shards.values()
            if s is not shard and self._fresh(s, now) and s.usable(now)
        ]
        if others and shard.seconds_per_token > self.health.slow_factor * statistics.median(others):
            self._eject(shard, now)

    def failed(self, shard: Shard, tokens: int, now: float) -> None:
        """The batch failed on the shard's account: eject it, and wait for discovery to see it ready."""
        self.ended(shard, tokens)
        shard.failed += 1
        shard.ready = False
        # Whatever comes back (a restarted process, say) is measured afresh, and so tried at once.
        shard.seconds_per_token = None
        self._eject(shard, now)

    def _eject(self, shard: Shard, now: float) -> None:
        shard.failures += 1
        backoff = min(self.health.eject_max_s, self.health.eject_base_s * 2 ** (shard.failures - 1))
        shard.ejected_until = now + backoff


class RetryBudget:
    """Retries allowed: `ratio` of first attempts, plus a reserve of `reserve` (a token bucket)."""

    def __init__(self, ratio: float = 0.1, reserve: float = 10.0) -> None:
        if ratio < 0 or reserve < 1:
            raise ValueError("need ratio >= 0 and reserve >= 1")
        self.ratio = ratio
        self.reserve = reserve
        self.balance = reserve

    def attempted(self) -> None:
        """A first attempt: earn `ratio` of a retry."""
        self.balance = min(self.reserve, self.balance + self.ratio)

    def try_retry(self) -> bool:
        if self.balance < 1 - 1e-9:  # ten deposits of 0.1 make one retry, whatever the float sum says
            return False
        self.balance -= 1
        return True
