"""An output cache: model outputs per sequence, content-addressed, bounded in bytes, LRU eviction.

With `redis_url` and `cache_in_redis`, a second level in the Redis the routers share: a miss here asks
it (one round trip per request), and computed rows are written there too (adapters/redis/cache.py).

The key is a digest of the model's name and version, its output tensor's name, and the sequence's exact
token ids and type ids: everything that decides the model's output for that sequence. What the router
does afterwards (normalising, cutting dimensions, combining windows) is applied to cached and fresh
rows alike, so those options never need to be part of the key, and a row of one model, version or
input can never answer for another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from cachetools import LRUCache

from router.core.models.contract import ModelContract
from router.core.text.windows import Window
from router.observability import metrics


class _ByteBoundLRU(LRUCache):
    def popitem(self):
        key, value = super().popitem()
        metrics.CACHE_EVICTIONS.inc()
        return key, value


class SharedRows(Protocol):
    """A second level every router of the fleet reads and writes (adapters/redis/cache.py)."""

    @property
    def answering(self) -> bool:
        """False while the store does not answer: not asked at all then."""

    async def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """The rows held under these keys (None: not held, or the store did not answer)."""

    def put_many(self, rows: Sequence[tuple[bytes, np.ndarray]]) -> None:
        """Store rows, without waiting."""


class OutputCache:
    def __init__(self, max_bytes: int, shared: SharedRows | None = None) -> None:
        self.max_bytes = max_bytes
        self._rows: LRUCache = _ByteBoundLRU(maxsize=max_bytes, getsizeof=lambda row: row.nbytes)
        self.shared = shared
        """With several routers: the fleet's cache, asked for what this one does not hold."""

    @property
    def bytes(self) -> int:
        return int(self._rows.currsize)

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def key(contract: ModelContract, window: Window) -> bytes:
        digest = hashlib.blake2b(digest_size=20)
        for part in (contract.name, contract.version, contract.output_name):
            digest.update(part.encode())
            digest.update(b"\0")
        digest.update(window.ids.tobytes())
        if window.type_ids is not None:
            digest.update(b"\0")
            digest.update(window.type_ids.tobytes())
        return digest.digest()

    def get(self, key: bytes, model: str) -> np.ndarray | None:
        row = self._rows.get(key)
        (metrics.CACHE_MISSES if row is None else metrics.CACHE_HITS).labels(model).inc()
        return row

    def put(self, key: bytes, row: np.ndarray) -> None:
        if row.nbytes > self.max_bytes:
            return
        # A copy: the row must not keep the whole batch's output array alive.
        self._rows[key] = np.array(row, copy=True)
        metrics.CACHE_BYTES.set(self._rows.currsize)

    def put_batch(self, rows: Sequence[tuple[bytes, np.ndarray]]) -> None:
        """A batch's rows: here, and in the fleet's cache."""
        for key, row in rows:
            self.put(key, row)
        if self.shared is not None:
            self.shared.put_many(rows)

    async def get_shared(self, keys: Sequence[bytes], model: str) -> list[np.ndarray | None]:
        """Ask the fleet's cache for rows this router does not hold (kept here too when found)."""
        if self.shared is None or not self.shared.answering:
            return [None] * len(keys)
        rows = await self.shared.get_many(keys)
        for key, row in zip(keys, rows, strict=True):
            if row is not None:
                metrics.CACHE_SHARED_HITS.labels(model).inc()
                self.put(key, row)
        return rows
