"""The per-model scheduler, behind a fake backend (pure logic: no network)."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest

from router.core.backend import Answer
from router.core.config import AdmissionConfig, BatchingConfig
from router.core.errors import ErrorKind, RouterError
from router.core.models.contract import ModelContract, Task, Truncation
from router.core.scheduling.scheduler import ModelScheduler
from router.core.text.windows import Window


def contract(max_batch_size: int = 8, max_len: int = 64) -> ModelContract:
    return ModelContract(
        name="fake",
        version="1",
        task=Task.EMBED,
        tokenizer_file="tokenizer.json",
        max_sequence_length=max_len,
        max_batch_size=max_batch_size,
        input_names=("input_ids", "attention_mask"),
        output_name="out",
        output_dims=(1,),
        default_truncation=Truncation.CHUNK,
        truncations=frozenset(Truncation),
        pooling="mean",
        normalize=False,
        dimensions=(),
    )


def window(length: int, marker: int) -> Window:
    """A sequence whose ids sum to a known value, so results can be traced back to it."""
    ids = np.zeros(length, dtype=np.int64)
    ids[0] = marker
    return Window(ids=ids, type_ids=None, start=0, end=length)


class FakeBackend:
    """Returns each row's id sum; records batches; can be held shut or made to fail."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.inflight = 0
        self.max_inflight = 0
        self.fail_with: Exception | None = None
        self.priorities: list[int] = []

    async def infer(self, contract, rows, timeout_s, priority=0):
        self.priorities.append(priority)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
            if self.fail_with is not None:
                raise self.fail_with
            self.batches.append(np.array([row.length for row in rows]))
            return Answer(np.array([[row.ids.sum()] for row in rows], dtype=np.float32), "fake")
        finally:
            self.inflight -= 1


async def settle() -> None:
    """Let every ready task run (dispatch tasks start one loop turn after they are created)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_rows_come_back_in_order_and_batches_respect_limits():
    backend = FakeBackend()
    scheduler = ModelScheduler(contract(max_batch_size=8), backend, BatchingConfig(max_batch_tokens=256))
    lengths = np.random.default_rng(0).integers(1, 64, size=100)
    windows = [window(int(n), marker=i + 1) for i, n in enumerate(lengths)]
    rows, ticket = await scheduler.run(windows)
    assert rows[:, 0].tolist() == list(range(1, 101))
    for batch in backend.batches:
        assert len(batch) <= 8 and (len(batch) * batch.max() <= 256 or len(batch) == 1)
    assert len(ticket.batches) == len(backend.batches)
    assert ticket.padded_tokens == sum(len(b) * int(b.max()) for b in backend.batches)
    assert scheduler.pending_sequences == 0 and scheduler.pending_tokens == 0


async def test_concurrent_requests_share_batches():
    backend = FakeBackend()
    backend.gate.clear()
    scheduler = ModelScheduler(contract(max_batch_size=32), backend, BatchingConfig(max_inflight_batches=1))
    first = asyncio.create_task(scheduler.run([window(10, 1)]))
    await asyncio.sleep(0)  # the first request leaves at once: the model was idle
    others = [asyncio.create_task(scheduler.run([window(10, i)])) for i in range(2, 12)]
    await asyncio.sleep(0)
    backend.gate.set()
    results = await asyncio.gather(first, *others)
    assert [int(rows[0, 0]) for rows, _ in results] == list(range(1, 12))
    # One batch for the first, then the ten that queued meanwhile went together.
    assert [len(b) for b in backend.batches] == [1, 10]
    assert results[1][1].batches == results[-1][1].batches


async def test_inflight_batches_are_bounded():
    backend = FakeBackend()
    scheduler = ModelScheduler(
        contract(max_batch_size=1), backend, BatchingConfig(max_batch_tokens=64, max_inflight_batches=3)
    )
    await scheduler.run([window(5, i) for i in range(20)])
    assert backend.max_inflight == 3


async def test_a_small_request_does_not_wait_behind_a_huge_one():
    backend = FakeBackend()
    backend.gate.clear()
    scheduler = ModelScheduler(
        contract(max_batch_size=4, max_len=12),
        backend,
        BatchingConfig(max_batch_tokens=12, max_inflight_batches=1),  # quantum: 24 tokens, two batches
        admission_config=AdmissionConfig(max_queued_tokens=100_000),
    )
    huge = asyncio.create_task(scheduler.run([window(3, 100 + i) for i in range(400)]))
    await asyncio.sleep(0)  # the huge request's first batch is in flight; 396 sequences wait
    small = asyncio.create_task(scheduler.run([window(12, 7)]))
    await asyncio.sleep(0)
    backend.gate.set()
    await asyncio.gather(huge, small)
    # The huge request finishes its quantum (one more batch), then the small one goes: it does not
    # wait for the other 98 batches.
    position = next(i for i, b in enumerate(backend.batches) if 12 in b.tolist())
    assert position == 2


async def test_a_tenants_small_requests_go_in_arrival_order():
    backend = FakeBackend()
    backend.gate.clear()
    scheduler = ModelScheduler(contract(max_batch_size=1), backend, BatchingConfig(max_inflight_batches=1))
    tasks = []
    lengths = [9, 4, 11, 6, 13, 5]  # neither shortest nor longest first would give arrival order
    for i, length in enumerate(lengths):
        tasks.append(asyncio.create_task(scheduler.run([window(length, 100 * i + j) for j in range(3)])))
        await asyncio.sleep(0)
    backend.gate.set()
    await asyncio.gather(*tasks)
    served = [int(b.max()) for b in backend.batches]
    assert served == [n for n in lengths for _ in range(3)]  # each request whole, in arrival order


async def test_two_tenants_take_turns():
    backend = FakeBackend()
    backend.gate.clear()
    scheduler = ModelScheduler(
        contract(max_batch_size=2), backend, BatchingConfig(max_batch_tokens=10_000, max_inflight_batches=1)
    )
    first = asyncio.create_task(scheduler.run([window(5, 100 + i) for i in range(20)], "a"))
    await asyncio.sleep(0)
    second = asyncio.create_task(scheduler.run([window(9, 200 + i) for i in range(20)], "b"))
    await asyncio.sleep(0)
    backend.gate.set()
    await asyncio.gather(first, second)
    # Lengths tell the tenants apart: 5 and 9 never share a batch, their neighbours are closer.
    # Service is shared in tokens: while both wait, neither gets more than one batch (18 tokens) ahead.
    served = {5: 0, 9: 0}
    for batch in backend.batches:
        served[int(batch.max())] += int(batch.sum())
        if served[5] < 100 and served[9] < 180:
            assert abs(served[5] - served[9]) <= 18 + 10  # + the first tenant's head start


async def test_identical_sequences_in_a_batch_are_computed_once():
    backend = FakeBackend()
    scheduler = ModelScheduler(contract(max_batch_size=8), backend, BatchingConfig())
    rows, ticket = await scheduler.run([window(4, 5), window(4, 6), window(4, 5), window(4, 5)])
    assert rows[:, 0].tolist() == [5, 6, 5, 5]
    assert [len(b) for b in backend.batches] == [2]


async def test_hold_waits_for_more_work_only_under_load():
    backend = FakeBackend()
    backend.gate.clear()
    config = BatchingConfig(max_batch_tokens=10_000, max_inflight_batches=2, max_batch_wait_s=0.05)
    scheduler = ModelScheduler(contract(max_batch_size=8), backend, config)
    first = asyncio.create_task(scheduler.run([window(4, 1)]))
    await settle()
    assert backend.inflight == 1  # idle model: no wait
    second = asyncio.create_task(scheduler.run([window(4, 2)]))
    await settle()
    assert backend.inflight == 1 and scheduler.pending_sequences == 1  # under load: held
    third = asyncio.create_task(scheduler.run([window(4, 3)]))
    await asyncio.sleep(0.1)
    assert backend.inflight == 2 and scheduler.pending_sequences == 0  # released together
    backend.gate.set()
    await asyncio.gather(first, second, third)
    assert [len(b) for b in backend.batches] == [1, 2]


async def test_budget_below_max_length_still_serves_long_sequences():
    backend = FakeBackend()
    scheduler = ModelScheduler(contract(max_len=64), backend, BatchingConfig(max_batch_tokens=16))
    rows, _ = await scheduler.run([window(64, 5), window(64, 6)])
    assert rows[:, 0].tolist() == [5, 6]


async def test_backend_failure_reaches_the_request_and_the_queue_recovers():
    backend = FakeBackend()
    backend.fail_with = RouterError("BACKEND_UNAVAILABLE", "down")
    scheduler = ModelScheduler(contract(max_batch_size=2), backend, BatchingConfig(max_inflight_batches=1))
    with pytest.raises(RouterError) as caught:
        await scheduler.run([window(4, i) for i in range(10)])
    assert caught.value.kind is ErrorKind.BACKEND_UNAVAILABLE
    assert scheduler.pending_sequences == 0
    backend.fail_with = None
    rows, _ = await scheduler.run([window(4, 9)])
    assert rows[0, 0] == 9


async def test_cancelled_request_leaves_no_queued_work():
    backend = FakeBackend()
    backend.gate.clear()
    scheduler = ModelScheduler(
        contract(max_batch_size=1), backend, BatchingConfig(max_batch_tokens=64, max_inflight_batches=1)
    )
    task = asyncio.create_task(scheduler.run([window(4, i) for i in range(10)]))
    await asyncio.sleep(0)
    assert scheduler.pending_sequences == 9
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scheduler.pending_sequences == 0 and scheduler.pending_tokens == 0
    backend.gate.set()
    rows, _ = await scheduler.run([window(4, 3)])
    assert rows[0, 0] == 3


class TaskRecordingBackend(FakeBackend):
    """Also records which task ran each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task] = []

    async def infer(self, contract, rows, timeout_s, priority=0):
        self.tasks.append(asyncio.current_task())
        return await super().infer(contract, rows, timeout_s)


async def test_a_lone_request_runs_its_batch_in_its_own_task_and_holds_a_slot():
    backend = TaskRecordingBackend()
    backend.gate.clear()
    scheduler = ModelScheduler(contract(max_batch_size=8), backend, BatchingConfig(max_inflight_batches=1))
    lone = asyncio.create_task(scheduler.run([window(4, 1), window(6, 2)]))
    await settle()
    assert backend.tasks == [lone] and scheduler.inflight == 1
    queued = asyncio.create_task(scheduler.run([window(4, 3)]))
    await settle()
    assert scheduler.pending_sequences == 1  # the one slot is the lone request's
    backend.gate.set()
    (first, _), (second, _) = await asyncio.gather(lone, queued)
    assert first[:, 0].tolist() == [1, 2] and second[:, 0].tolist() == [3]
    # The queued request's batch went the usual way: a dispatch task of its own.
    assert backend.tasks[1] is not queued and scheduler.inflight == 0
    # More than one batch's worth is not alone: every one of its batches runs in a dispatch task.
    await scheduler.run([window(4, i) for i in range(20)])
    assert len(backend.batches) == 2 + 3
    assert all(task not in (asyncio.current_task(), lone, queued) for task in backend.tasks[2:])


async def test_a_lone_request_that_is_cancelled_or_fails_frees_its_slot_and_loses_no_error():
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    backend = FakeBackend()
    backend.gate.clear()
    scheduler = ModelScheduler(contract(), backend, BatchingConfig(max_inflight_batches=1))
    lone = asyncio.create_task(scheduler.run([window(4, 1)]))
    await settle()
    assert backend.inflight == 1
    lone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await lone
    assert backend.inflight == 0 and scheduler.inflight == 0  # the model call was cancelled with it
    backend.gate.set()
    backend.fail_with = RouterError("BACKEND_UNAVAILABLE", "down")
    with pytest.raises(RouterError) as caught:
        await scheduler.run([window(4, 2)])
    assert caught.value.kind is ErrorKind.BACKEND_UNAVAILABLE and scheduler.inflight == 0
    backend.fail_with = None
    rows, _ = await scheduler.run([window(4, 3)])
    assert rows[0, 0] == 3
    del lone, caught
    gc.collect()
    assert reported == []  # no future's exception went unread
