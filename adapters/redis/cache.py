"""The output cache's second level, in the Redis the fleet shares: a sequence one router computed
answers the same sequence at every router.

Keys are the output cache's own (router/core/scheduling/cache.py: a digest of the model's name, version,
output tensor and the sequence's exact token ids), under `<prefix>:rows:`. Values are the row's raw
bytes after a short header (dtype and shape), float32 as the model returned it. Each is written with
the TTL `cache_ttl_s`; the size cap is Redis's own `maxmemory` with `allkeys-lru` (deploy/kubernetes/
redis.yaml sets 256 MB), and a row over MAX_ROW_BYTES is not shared. A lookup is one MGET per request;
writes go in one pipeline per batch, off the request's path. A failed or slow command reports the link
not answering (adapters/redis/link.py): the router then uses its own cache alone until Redis answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from adapters.redis.link import RedisLink

MAX_ROW_BYTES = 1 << 20
"""A row bigger than this (a token-level output of a long sequence) stays in the router's own cache."""


def encode(row: np.ndarray) -> bytes:
    header = f"{row.dtype.str}|{','.join(map(str, row.shape))}|".encode()
    return header + np.ascontiguousarray(row).tobytes()


def decode(value: bytes) -> np.ndarray:
    dtype, shape, raw = value.split(b"|", 2)
    dims = tuple(int(n) for n in shape.split(b",") if n)
    return np.frombuffer(raw, dtype=np.dtype(dtype.decode())).reshape(dims)


class RedisRows:
    """`SharedRows` in Redis."""

    def __init__(self, link: RedisLink, ttl_s: float) -> None:
        self.link = link
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._prefix = f"{link.prefix}:rows:".encode()
        self._writes: set[asyncio.Task] = set()

    @property
    def answering(self) -> bool:
        return self.link.answering

    async def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        try:
            values = await self.link.client.mget([self._prefix + key for key in keys])
        except Exception as error:  # noqa: BLE001 - Redis down or slow: the router's own cache alone
            self.link.failed(error)
            return [None] * len(keys)
        return [None if value is None else decode(value) for value in values]

    def put_many(self, rows: Sequence[tuple[bytes, np.ndarray]]) -> None:
        """Write in the background; the batch's callers do not wait for Redis."""
        shared = [(key, row) for key, row in rows if row.nbytes <= MAX_ROW_BYTES]
        if not shared or not self.link.answering:
            return
        task = asyncio.get_running_loop().create_task(self._write(shared))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, rows: list[tuple[bytes, np.ndarray]]) -> None:
        try:
            async with self.link.client.pipeline(transaction=False) as pipe:
                for key, row in rows:
                    pipe.set(self._prefix + key, encode(row), px=self.ttl_ms)
                await pipe.execute()
        except Exception as error:  # noqa: BLE001
            self.link.failed(error)
