"""The fair queue on its own, and the scheduler's fairness across tenants (fake backend)."""

from __future__ import annotations

import asyncio

import numpy as np

from router.core.config import AdmissionConfig, BatchingConfig
from router.core.scheduling.fair_queue import FairQueue
from router.core.scheduling.scheduler import ModelScheduler
from router.core.scheduling.work import Item, Ticket
from tests.unit.core.scheduling.test_scheduler import FakeBackend, contract, window


def items(ticket: Ticket, lengths: list[int], start: int) -> list[Item]:
    return [Item(start + i, window(n, start + i), ticket, i) for i, n in enumerate(lengths)]


def serve_one(queue: FairQueue) -> Item:
    """Dispatch a batch of one: the anchor."""
    anchor = queue.anchor()
    position = queue.by_length.index(anchor)
    [taken] = queue.take(position, position + 1)
    return taken


def test_tenants_alternate_in_tokens_and_requests_keep_arrival_order_within_one():
    queue = FairQueue(quantum=20)
    a1, a2, b = Ticket(0.0, "a"), Ticket(0.1, "a"), Ticket(0.2, "b")
    queue.push(a1, items(a1, [10, 10], 0))
    queue.push(a2, items(a2, [10], 10))
    queue.push(b, items(b, [10, 10, 10], 20))
    order = [serve_one(queue).ticket for _ in range(6)]
    assert order == [a1, b, a1, b, a2, b]
    assert not queue and queue.tokens == 0


def test_withdrawn_work_leaves_no_trace():
    queue = FairQueue(quantum=20)
    a = Ticket(0.0, "a")
    pending = items(a, [5, 6, 7], 0)
    queue.push(a, pending)
    queue.withdraw(pending[:2])
    assert len(queue) == 1 and queue.tokens == 7 and queue.turns() == 7
    queue.withdraw(pending[2:])
    assert not queue and queue.requests == 0 and queue.waiting_tenants() == set()


class HookedBackend(FakeBackend):
    """Calls `hook` as the n-th batch starts."""

    def __init__(self, at: int, hook) -> None:
        super().__init__()
        self.at, self.hook, self.calls = at, hook, 0

    async def infer(self, contract, rows, timeout_s, priority=0):
        self.calls += 1
        if self.calls == self.at:
            self.hook()
        return await super().infer(contract, rows, timeout_s)


async def test_a_new_request_waits_one_quantum_of_its_own_tenant_not_the_other_tenants_clock():
    # Tenant b holds one huge request; tenant a a long one and four small ones. b's huge request gets all
    # of b's service, so its place (tag) runs far ahead of a's long one. A new small request from a must
    # wait at most a quantum of a's long request (plus b's interleaved turns), not until a's long
    # request has caught up with b's clock.
    late: list[asyncio.Task] = []
    arrived = asyncio.Event()

    def arrive() -> None:
        late.append(asyncio.create_task(scheduler.run([window(11, 7)], "a")))
        arrived.set()

    backend = HookedBackend(at=16, hook=arrive)
    scheduler = ModelScheduler(
        contract(max_batch_size=1, max_len=12),
        backend,
        BatchingConfig(max_batch_tokens=12, max_inflight_batches=1),  # quantum: 24 tokens, two batches
        admission_config=AdmissionConfig(max_queued_tokens=1_000_000),
    )
    backend.gate.clear()
    tasks = [asyncio.create_task(scheduler.run([window(12, 1000 + i) for i in range(40)], "a"))]
    await asyncio.sleep(0)
    tasks += [
        asyncio.create_task(scheduler.run([window(12, 2000 + 10 * r + i) for i in range(2)], "a")) for r in range(4)
    ]
    tasks.append(asyncio.create_task(scheduler.run([window(12, 5000 + i) for i in range(200)], "b")))
    await asyncio.sleep(0)
    backend.gate.set()
    await arrived.wait()
    await asyncio.gather(*tasks, *late)
    served = next(i for i, b in enumerate(backend.batches) if b.tolist() == [11])
    # a's turns come every other batch: the last small request's remaining turn and one quantum (two
    # batches) of the long one at most, so within 2 x 3 batches of arriving.
    assert served - 16 <= 6, served - 16  # it arrived as the 16th batch started
    assert np.all([len(b) == 1 for b in backend.batches])


def test_critical_work_goes_first_and_sheddable_work_last_whatever_the_tenants_tags():
    from router.core.criticality import Criticality

    queue = FairQueue(quantum=20)
    shed = Ticket(0.0, "a", criticality=Criticality.SHEDDABLE)
    usual = Ticket(0.1, "a")
    critical = Ticket(0.2, "b", criticality=Criticality.CRITICAL)
    queue.push(shed, items(shed, [10], 0))
    queue.push(usual, items(usual, [10, 10], 10))
    queue.push(critical, items(critical, [10], 20))
    assert [serve_one(queue).ticket for _ in range(4)] == [critical, usual, usual, shed]
