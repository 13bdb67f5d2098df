"""The output cache: its byte bound, its key, and the scheduler answering from it."""

from __future__ import annotations

import dataclasses

import numpy as np

from router.core.config import BatchingConfig
from router.core.scheduling.cache import OutputCache
from router.core.scheduling.scheduler import ModelScheduler
from router.observability import metrics
from tests.unit.core.scheduling.test_scheduler import FakeBackend, contract, window


def test_bound_in_bytes_with_lru_eviction():
    cache = OutputCache(max_bytes=10 * 384 * 4)
    evicted_before = metrics.CACHE_EVICTIONS._value.get()
    keys = [OutputCache.key(contract(), window(5, i)) for i in range(25)]
    for key in keys:
        cache.put(key, np.ones(384, dtype=np.float32))
        cache.get(keys[0], "fake")  # keeps the first one recently used
    assert cache.bytes <= cache.max_bytes and len(cache) == 10
    assert cache.get(keys[0], "fake") is not None
    assert cache.get(keys[1], "fake") is None
    assert metrics.CACHE_EVICTIONS._value.get() - evicted_before == 15


def test_a_row_bigger_than_the_bound_is_not_kept():
    cache = OutputCache(max_bytes=100)
    cache.put(b"k", np.ones(384, dtype=np.float32))
    assert len(cache) == 0


def test_key_covers_model_version_output_and_tokens():
    base = contract()
    w = window(5, 1)
    key = OutputCache.key(base, w)
    assert key == OutputCache.key(base, window(5, 1))
    assert key != OutputCache.key(dataclasses.replace(base, name="other"), w)
    assert key != OutputCache.key(dataclasses.replace(base, version="2"), w)
    assert key != OutputCache.key(dataclasses.replace(base, output_name="other"), w)
    assert key != OutputCache.key(base, window(5, 2))
    typed = w._replace(type_ids=np.ones(5, dtype=np.int64))
    assert key != OutputCache.key(base, typed)


async def test_second_pass_is_answered_from_the_cache_and_a_new_version_misses():
    cache = OutputCache(max_bytes=1 << 20)
    backend = FakeBackend()
    windows = [window(4 + i % 7, i + 1) for i in range(30)]
    first = ModelScheduler(contract(), backend, BatchingConfig(), cache)
    rows, ticket = await first.run(windows)
    assert ticket.cache_hits == 0
    sent = len(backend.batches)

    again, ticket = await first.run(windows)
    assert ticket.cache_hits == 30 and ticket.computed_tokens == 0
    assert len(backend.batches) == sent
    assert np.array_equal(rows, again)

    upgraded = ModelScheduler(dataclasses.replace(contract(), version="2"), backend, BatchingConfig(), cache)
    _, ticket = await upgraded.run(windows)
    assert ticket.cache_hits == 0 and len(backend.batches) > sent


class Rows:
    """A fleet's shared cache in a dict (the real one, Redis, runs in tests/e2e/test_fleet.py)."""

    def __init__(self) -> None:
        self.answering = True
        self.rows: dict[bytes, np.ndarray] = {}
        self.asked = 0

    async def get_many(self, keys):
        self.asked += 1
        return [self.rows.get(key) if self.answering else None for key in keys]

    def put_many(self, rows):
        self.rows.update(rows)


async def test_a_sequence_one_router_computed_answers_at_another_through_the_shared_level():
    shared = Rows()
    backend = FakeBackend()
    windows = [window(4 + i % 7, i + 1) for i in range(12)]
    here = ModelScheduler(contract(), backend, BatchingConfig(), OutputCache(1 << 20, shared))
    rows, _ = await here.run(windows)
    sent = len(backend.batches)
    there = ModelScheduler(contract(), backend, BatchingConfig(), OutputCache(1 << 20, shared))
    again, ticket = await there.run(windows)
    assert ticket.cache_hits == 12 and len(backend.batches) == sent and np.array_equal(rows, again)
    asked = shared.asked
    _, ticket = await there.run(windows)  # now in its own level: the shared one is not asked
    assert ticket.cache_hits == 12 and shared.asked == asked


async def test_while_the_shared_level_does_not_answer_it_is_not_asked_and_work_is_computed():
    shared = Rows()
    shared.answering = False
    backend = FakeBackend()
    scheduler = ModelScheduler(contract(), backend, BatchingConfig(), OutputCache(1 << 20, shared))
    _, ticket = await scheduler.run([window(5, 1)])
    assert ticket.cache_hits == 0 and shared.asked == 0 and backend.batches


def test_rows_travel_to_redis_and_back_as_raw_bytes_with_dtype_and_shape():
    from adapters.redis.cache import decode, encode

    for row in (np.arange(384, dtype=np.float32), np.ones((3, 8), dtype=np.float16), np.float32([0.5])):
        back = decode(encode(row))
        assert back.dtype == row.dtype and back.shape == row.shape and np.array_equal(back, row)
    assert encode(np.float32([1.0])).endswith(np.float32([1.0]).tobytes())  # float32 as it came
