"""One router process's link to the Redis its fleet shares: a client whose every command gives up after
`timeout_s` (no retries: a slow Redis must not slow calls), whether Redis answers now, and how many
router processes are alive (which also sets this router's share of each Triton's batches in flight,
router/core/scheduling/fleet_share.py).

Each router process announces itself every BEAT_S in a sorted set (member: its id, score: the time), and
reads how many were seen within the last three beats: that is the share each takes of a tenant's rate
while Redis does not answer (the count last read is kept through the outage; before Redis ever answered,
`routers_expected`). When a command fails or times out the link reports not answering, at once, and asks
Redis again every `probe_s` until it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid

import redis.asyncio as redis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from router.core.scheduling.fleet_share import FleetShare
from router.observability import metrics

log = structlog.get_logger(__name__)

BEAT_S = 2.0
"""How often a router process announces itself."""

ALIVE_BEATS = 3
"""A router not heard of for this many beats is counted gone."""


class RedisLink:
    def __init__(
        self,
        url: str,
        timeout_s: float,
        prefix: str = "modelrouter",
        probe_s: float = 1.0,
        routers_expected: int = 1,
        share: FleetShare | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.probe_s = probe_s
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.answering = False
        self.routers = max(1, routers_expected)
        """Router processes last seen alive (kept while Redis does not answer)."""
        self.share = share
        """Told the count each time it is read: this router's part of each Triton's batches in flight."""
        if share is not None:
            share.routers = self.routers
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._members_key = f"{prefix}:routers"
        self._task: asyncio.Task | None = None
        self._told_down = False

    async def start(self) -> None:
        """Ask Redis once (a router starts whether or not it answers), then keep watching it."""
        await self._ask()
        self._task = asyncio.create_task(self._watch(), name="redis-link")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.answering:
            with contextlib.suppress(Exception):
                await self.client.zrem(self._members_key, self.id)  # gone now, not in three beats
        with contextlib.suppress(Exception):
            await self.client.aclose()

    def failed(self, error: BaseException) -> None:
        """A command failed or timed out: count and cache locally until Redis answers again."""
        if self.answering or not self._told_down:
            log.warning(
                "redis.not_answering",
                error=f"{type(error).__name__}: {error}",
                routers=self.routers,
                retry_s=self.probe_s,
            )
            self._told_down = True
        self.answering = False
        metrics.SHARED_STORE_UP.set(0)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(BEAT_S if self.answering else self.probe_s)
            await self._ask()

    async def _ask(self) -> None:
        """Announce this router and count the live ones; on success Redis is answering again."""
        now = time.time()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zadd(self._members_key, {self.id: now})
                pipe.zremrangebyscore(self._members_key, "-inf", now - ALIVE_BEATS * BEAT_S)
                pipe.zcard(self._members_key)
                pipe.expire(self._members_key, int(ALIVE_BEATS * BEAT_S) + 1)
                _, _, count, _ = await pipe.execute()
        except Exception as error:  # noqa: BLE001 - whatever Redis did, the router goes on without it
            self.failed(error)
            return
        self.routers = max(1, int(count))
        metrics.SHARED_STORE_ROUTERS.set(self.routers)
        if self.share is not None:
            self.share.routers = self.routers
        if not self.answering:
            self.answering = True
            self._told_down = False
            metrics.SHARED_STORE_UP.set(1)
            log.info("redis.answering", url=_without_password(self.url), routers=self.routers)


def _without_password(url: str) -> str:
    """The URL as it may be logged: a password in it replaced."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, credentials = head.partition("://")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{tail}"
