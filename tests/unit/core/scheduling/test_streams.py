"""The stream gate: places in a generation model's running batch, a bounded fair wait, deadlines."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.core.errors import RouterError
from router.core.scheduling.streams import StreamGate


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_streams_run_up_to_the_places_of_every_shard_then_wait():
    gate = StreamGate("llm", slots=2)
    gate.shards = 2
    for _ in range(4):
        await gate.enter("a", 10, None)
    waiting = asyncio.create_task(gate.enter("a", 10, None))
    await settle()
    assert not waiting.done() and gate.active == 4
    gate.leave("a", 1.0)
    await settle()
    assert waiting.done() and gate.active == 4


async def test_a_full_wait_list_refuses_at_once_with_a_retry_delay():
    gate = StreamGate("llm", slots=1, max_waiting=1)
    await gate.enter("a", 10, None)
    gate.leave("a", 2.0)  # one stream took 2 s
    await gate.enter("a", 10, None)
    waiter = asyncio.create_task(gate.enter("a", 10, None))
    await settle()
    with pytest.raises(RouterError) as caught:
        await gate.enter("b", 10, None)
    assert caught.value.reason == "QUEUE_FULL" and caught.value.retry_after_s >= 2.0
    waiter.cancel()


async def test_a_free_place_goes_to_the_tenant_with_the_fewest_running_streams():
    gate = StreamGate("llm", slots=2)
    await gate.enter("noisy", 10, None)
    await gate.enter("noisy", 10, None)
    order: list[str] = []

    async def wait(tenant: str) -> None:
        await gate.enter(tenant, 10, None)
        order.append(tenant)

    tasks = [asyncio.create_task(wait(t)) for t in ("noisy", "noisy", "quiet")]
    await settle()
    gate.leave("noisy", 1.0)
    await settle()
    assert order == ["quiet"]  # arrived last, but holds no stream
    gate.leave("noisy", 1.0)
    await settle()
    assert order == ["quiet", "noisy"]
    for task in tasks:
        task.cancel()


async def test_deadlines_refuse_early_and_expire_while_waiting():
    gate = StreamGate("llm", slots=1)
    await gate.enter("a", 10, None)
    gate.leave("a", 5.0)  # streams take about 5 s here
    await gate.enter("a", 10, None)
    with pytest.raises(RouterError) as caught:
        await gate.enter("b", 10, time.monotonic() + 1.0)
    assert caught.value.reason == "DEADLINE_TOO_SHORT"
    gate.mean_stream_s = None  # no estimate: the wait itself runs out
    with pytest.raises(RouterError) as caught:
        await gate.enter("b", 10, time.monotonic() + 0.05)
    assert caught.value.reason == "DEADLINE_EXPIRED" and not gate.waiting
    gate.leave("a", None)
    assert gate.active == 0
