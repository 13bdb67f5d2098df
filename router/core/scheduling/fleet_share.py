"""This router's share of what each model server takes at once from every router in front of it.

A server runs `max_inflight_batches` batches (and a model's stream places) well; more only wait in its
own queue, where no router's admission sees them. With several routers each keeping that many in
flight, a server held routers x as many, and a call admitted by one router waited behind the others'
batches (bench/results/fleet.md: two routers' p50 under overload was twice one router's). So each router
keeps its share: the per-server figure divided by the routers alive (announced in the Redis they share,
adapters/redis/link.py), rounded up. Without Redis a router counts itself alone.
"""

from __future__ import annotations


class FleetShare:
    def __init__(self, routers: int = 1) -> None:
        self.routers = max(1, routers)
        """Router processes in front of the same servers (this one included)."""

    def of(self, per_server: int) -> int:
        """This router's part of `per_server`, at least 1."""
        return max(1, -(-per_server // self.routers))


ALONE = FleetShare()
"""A router that shares its servers with no other (the default)."""
