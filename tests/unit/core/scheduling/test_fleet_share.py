"""Each router's part of what a model server takes at once, as the routers in front of it come and go."""

from __future__ import annotations

from router.core.config import BatchingConfig
from router.core.scheduling.fleet_share import FleetShare
from router.core.scheduling.scheduler import ModelScheduler
from router.shards.picking import ShardSet
from tests.unit.core.scheduling.test_scheduler import FakeBackend, contract


def test_a_share_is_the_per_server_figure_over_the_routers_rounded_up_and_never_zero():
    share = FleetShare()
    assert share.of(4) == 4
    share.routers = 2
    assert share.of(4) == 2 and share.of(3) == 2
    share.routers = 8
    assert share.of(4) == 1


def test_schedulers_and_shard_picks_follow_the_routers_alive():
    share = FleetShare()
    scheduler = ModelScheduler(contract(), FakeBackend(), BatchingConfig(max_inflight_batches=4), share=share)
    scheduler.shards = 2
    assert scheduler.slots == 8
    share.routers = 4  # three more routers announced themselves
    assert scheduler.slots == 2
    shards = ShardSet(max_inflight=2, share=share)
    shards.update(["a", "b"])
    for shard in shards.shards.values():
        shard.ready, shard.models = True, {"m": frozenset({"1"})}
    shards.shards["a"].inflight = 1
    share.routers = 2  # one batch in flight per shard is this router's part of two
    assert {shards.pick("m", "", 10, now=0.0).address for _ in range(50)} == {"b"}
