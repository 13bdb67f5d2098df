"""Tenant rates counted in Redis for the whole fleet of routers: `limits`' sliding window counter (two
counters per window and a Lua script, one round trip per count), over the link's connections. A count
that fails or times out reports the link not answering and returns None: the core then counts locally
(router/core/scheduling/tenant_limits.py)."""

from __future__ import annotations

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

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
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._items: dict[tuple[int, int], RateLimitItemPerSecond] = {}

    @property
    def answering(self) -> bool:
        return self.link.answering

    @property
    def routers(self) -> int:
        return self.link.routers

    async def hit(self, key: str, amount: int, limit: int, window_s: int) -> bool | None:
        item = self._items.get((limit, window_s))
        if item is None:
            item = self._items[(limit, window_s)] = RateLimitItemPerSecond(limit, window_s)
        try:
            return await self._limiter.hit(item, key, cost=amount)
        except Exception as error:  # noqa: BLE001 - Redis down or slow: counted locally instead
            self.link.failed(error)
            return None
