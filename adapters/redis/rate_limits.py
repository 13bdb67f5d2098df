"""Tenant rates counted in Redis for the whole fleet of routers, with `limits` over the link's
connections, one round trip (a Lua script) per count:

- requests/s in a moving window (a sorted list of the window's hits: exact, and small, one entry per
  request allowed in the window);
- tokens/s in a sliding window counter (two counters per window: a request's tokens are one addition,
  where a moving window would store an entry per token). It weighs the previous window's count by how
  much of it still overlaps, which assumes its hits were spread evenly: a few percent off either way.

A count that fails or times out reports the link not answering and returns None: the core then counts
locally (router/core/scheduling/tenant_limits.py)."""

from __future__ import annotations

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from adapters.redis.link import RedisLink


class RedisCounts:
    """`SharedCounts` in Redis."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        storage = RedisStorage(
            "async+" + link.url,
            implementation="redispy",
            key_prefix=f"{link.prefix}:limits",
            connection_pool=link.client.connection_pool,
        )
        self._counter = SlidingWindowCounterRateLimiter(storage)
        self._exact = MovingWindowRateLimiter(storage)
        self._items: dict[tuple[int, int], RateLimitItemPerSecond] = {}

    @property
    def answering(self) -> bool:
        return self.link.answering

    @property
    def routers(self) -> int:
        return self.link.routers

    async def hit(self, key: str, amount: int, limit: int, window_s: int, exact: bool = False) -> bool | None:
        item = self._items.get((limit, window_s))
        if item is None:
            item = self._items[(limit, window_s)] = RateLimitItemPerSecond(limit, window_s)
        try:
            return await (self._exact if exact else self._counter).hit(item, key, cost=amount)
        except Exception as error:  # noqa: BLE001 - Redis down or slow: counted locally instead
            self.link.failed(error)
            return None
