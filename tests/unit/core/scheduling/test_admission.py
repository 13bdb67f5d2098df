"""Admission in the scheduler: queue bounds, deadlines, tenant rates and fairness (fake backend)."""

from __future__ import annotations

import asyncio
import time

import pytest

from router.core.config import AdmissionConfig, BatchingConfig
from router.core.errors import ErrorKind, RouterError
from router.core.scheduling.drain import ArrivalRate, Calibration, DrainRate
from router.core.scheduling.scheduler import ModelScheduler
from router.core.scheduling.tenant_limits import LocalTenantLimiter, TenantLimiter, TenantLimits, TenantRates
from router.core.scheduling.work import backend_timeout
from tests.unit.core.scheduling.test_scheduler import FakeBackend, contract, settle, window


def blocked(admission: AdmissionConfig, tenants: TenantLimiter | None = None, max_batch_tokens=1000) -> tuple:
    """A scheduler whose backend holds every batch until its gate opens."""
    backend = FakeBackend()
    backend.gate.clear()
    scheduler = ModelScheduler(
        contract(max_batch_size=4),
        backend,
        BatchingConfig(max_batch_tokens=max_batch_tokens, max_inflight_batches=1),
        admission_config=admission,
        tenants=tenants,
    )
    return scheduler, backend


def windows(count: int, length: int = 10, marker: int = 1000) -> list:
    return [window(length, marker + i) for i in range(count)]


async def test_past_the_token_bound_work_is_refused_with_a_retry_delay():
    scheduler, backend = blocked(AdmissionConfig(max_queued_tokens=100))
    first = asyncio.create_task(scheduler.run(windows(4)))  # leaves at once
    second = asyncio.create_task(scheduler.run(windows(9, marker=2000)))  # 90 tokens wait
    await settle()
    with pytest.raises(RouterError) as caught:
        await scheduler.run(windows(2, marker=3000))  # 110 > 100
    assert caught.value.kind is ErrorKind.OVERLOADED and caught.value.reason == "QUEUE_FULL"
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0
    assert scheduler.pending_tokens == 90  # nothing of the refused request was queued
    small = asyncio.create_task(scheduler.run(windows(1, marker=4000)))  # 100 fits
    backend.gate.set()
    await asyncio.gather(first, second, small)


async def test_a_request_bigger_than_the_bound_runs_when_the_queue_is_empty():
    scheduler, backend = blocked(AdmissionConfig(max_queued_tokens=50))
    backend.gate.set()
    rows, _ = await scheduler.run(windows(30))
    assert len(rows) == 30


async def test_request_count_bound():
    scheduler, backend = blocked(AdmissionConfig(max_queued_requests=2))
    tasks = [asyncio.create_task(scheduler.run(windows(1, marker=100 * i))) for i in range(3)]
    await settle()  # one in flight, two waiting
    with pytest.raises(RouterError) as caught:
        await scheduler.run(windows(1, marker=9000))
    assert caught.value.reason == "QUEUE_FULL"
    backend.gate.set()
    await asyncio.gather(*tasks)


async def test_admission_off_queues_everything():
    scheduler, backend = blocked(AdmissionConfig(enabled=False, max_queued_tokens=10, max_queued_requests=1))
    tasks = [asyncio.create_task(scheduler.run(windows(5, marker=100 * i))) for i in range(6)]
    await settle()
    backend.gate.set()
    assert len(await asyncio.gather(*tasks)) == 6


async def test_a_quiet_tenant_still_gets_in_past_the_bound():
    scheduler, backend = blocked(AdmissionConfig(max_queued_tokens=100))
    first = asyncio.create_task(scheduler.run(windows(5), "noisy"))  # 4 leave, 1 waits
    await settle()
    second = asyncio.create_task(scheduler.run(windows(9, marker=2000), "noisy"))  # 100 tokens wait
    await settle()
    with pytest.raises(RouterError):
        await scheduler.run(windows(1, marker=3000), "noisy")  # past the bound, and noisy holds it all
    quiet = asyncio.create_task(scheduler.run(windows(1, marker=4000), "quiet"))
    await settle()
    assert not quiet.done() and scheduler.pending_tokens == 110  # admitted: waiting, not refused
    backend.gate.set()
    await asyncio.gather(first, second, quiet)


async def test_a_quiet_tenant_is_served_before_a_noisy_tenants_backlog():
    scheduler, backend = blocked(AdmissionConfig(max_queued_tokens=10_000))
    noisy = [asyncio.create_task(scheduler.run(windows(4, marker=100 * i), "noisy")) for i in range(10)]
    await settle()
    quiet = asyncio.create_task(scheduler.run([window(30, 7)], "quiet"))
    await settle()
    backend.gate.set()
    await asyncio.gather(*noisy, quiet)
    # The first batch (noisy) was in flight when the quiet request came; the quiet one went next.
    position = next(i for i, b in enumerate(backend.batches) if 30 in b.tolist())
    assert position == 1


async def test_a_request_past_its_deadline_is_never_sent():
    scheduler, backend = blocked(AdmissionConfig())
    with pytest.raises(RouterError) as caught:
        await scheduler.run(windows(1), deadline=time.monotonic() - 0.001)
    assert caught.value.kind is ErrorKind.DEADLINE_EXCEEDED and caught.value.reason == "DEADLINE_EXPIRED"

    first = asyncio.create_task(scheduler.run(windows(4)))
    await settle()
    late = asyncio.create_task(scheduler.run(windows(1, 10, 5000), deadline=time.monotonic() + 0.05))
    await asyncio.sleep(0.1)
    backend.gate.set()
    await first
    with pytest.raises(RouterError) as caught:
        await late
    assert caught.value.reason == "DEADLINE_EXPIRED"
    assert all(int(b.sum()) == 40 for b in backend.batches)  # only the first request's batch ran
    assert scheduler.pending_sequences == 0


async def test_a_deadline_the_drain_rate_cannot_meet_is_refused_at_once():
    scheduler, backend = blocked(AdmissionConfig())
    scheduler.admission.drain.rate = 100.0  # tokens/s, as if measured
    with pytest.raises(RouterError) as caught:
        await scheduler.run(windows(10), deadline=time.monotonic() + 0.5)  # needs ~1 s
    assert caught.value.reason == "DEADLINE_TOO_SHORT"
    assert backend.batches == [] and backend.inflight == 0


def test_the_backend_timeout_is_the_longest_deadline_left_within_the_setting():
    now = time.monotonic()

    def batch(*deadlines):
        return [type("I", (), {"ticket": type("T", (), {"deadline": d})()})() for d in deadlines]

    assert backend_timeout(batch(now + 0.2, now + 1.5), now, None) == pytest.approx(1.5)
    assert backend_timeout(batch(now + 0.2, now + 1.5), now, 1.0) == pytest.approx(1.0)
    assert backend_timeout(batch(now + 0.2, None), now, 30.0) == 30.0  # one request waits without a deadline


async def test_tenant_rates():
    limiter = LocalTenantLimiter(
        TenantRates(TenantLimits(requests_per_s=2, burst_s=1), {"big": TenantLimits(tokens_per_s=100, burst_s=1)})
    )
    scheduler, backend = blocked(AdmissionConfig(), limiter)
    backend.gate.set()
    await scheduler.run(windows(1), "small")
    await scheduler.run(windows(1, marker=2000), "small")
    with pytest.raises(RouterError) as caught:
        await scheduler.run(windows(1, marker=3000), "small")
    assert caught.value.reason == "TENANT_RATE_LIMITED" and 0 < caught.value.retry_after_s <= 1
    assert caught.value.metadata["tenant"] == "small"
    await scheduler.run(windows(9, marker=4000), "big")  # 90 of 100 tokens
    with pytest.raises(RouterError):
        await scheduler.run(windows(2, marker=5000), "big")
    await scheduler.run(windows(1, marker=6000), "other")  # others are not affected


def test_drain_rate_counts_busy_time_only_over_spans():
    drain = DrainRate(smoothing=1.0, min_span_s=0.5)
    drain.started(10.0)
    drain.finished(400, 10.2, still_inflight=1)
    drain.finished(600, 10.2, still_inflight=0)  # two batches answered together: no sample yet
    assert drain.rate is None
    drain.started(100.0)  # idle for a long while in between: not counted
    drain.finished(1000, 100.4, still_inflight=0)
    assert drain.rate == pytest.approx(2000 / 0.6)


def test_calibration_adds_the_time_estimates_miss():
    calibration = Calibration(smoothing=0.5)
    assert calibration.adjust(1.0) == 1.0
    for _ in range(20):
        calibration.observe(estimate_s=0.02, actual_s=0.12)  # a lone small request: 0.1 s of overheads
    assert calibration.adjust(1.0) == pytest.approx(1.1, rel=0.01)  # added to a long queue, not x6
    for _ in range(20):
        calibration.observe(estimate_s=1.0, actual_s=0.5)  # pessimistic estimates never make it negative
    assert calibration.adjust(1.0) == pytest.approx(1.0, abs=1e-3)


async def test_a_huge_request_in_the_queue_does_not_lock_small_ones_out():
    scheduler, backend = blocked(AdmissionConfig(max_queued_tokens=3000))  # quantum: 2 x 1000 tokens
    huge = asyncio.create_task(scheduler.run(windows(400, marker=10_000)))  # 4,000 tokens: empty queue
    await settle()
    assert scheduler.pending_tokens > scheduler.admission.max_queued_tokens
    small = [asyncio.create_task(scheduler.run(windows(1, marker=20_000 + i))) for i in range(5)]
    await settle()
    backend.gate.set()
    await asyncio.gather(huge, *small)  # none refused


async def test_retry_delay_counts_queued_work_as_the_bound_does():
    scheduler, backend = blocked(AdmissionConfig(max_queued_tokens=3000))  # quantum: 2 x 1000 tokens
    scheduler.admission.drain.rate = 1000.0  # tokens/s, as if measured
    huge = asyncio.create_task(scheduler.run(windows(400, marker=10_000)))  # one turn: 2,000 tokens
    await settle()
    small = [asyncio.create_task(scheduler.run(windows(10, marker=20_000 + 100 * i))) for i in range(9)]
    await settle()  # queued turns: 2,000 + 9 x 100
    with pytest.raises(RouterError) as caught:
        await scheduler.run(windows(20, marker=30_000))  # 2,900 + 200 is 100 over the bound
    assert caught.value.reason == "QUEUE_FULL"
    assert caught.value.retry_after_s == pytest.approx(0.1)  # not the huge request's whole backlog
    backend.gate.set()
    await asyncio.gather(huge, *small)


def test_the_arrival_rate_counts_within_its_window():
    rate = ArrivalRate(window_s=2.0, buckets=4)
    for i in range(30):
        rate.arrived(10.0 + i * 0.05)  # 30 in 1.5 s
    assert rate.count(11.5) == 30
    assert rate.count(14.0) == 0  # all of it outside the window now


async def overloaded_scheduler():
    """A scheduler with 40 tokens in flight and 400 waiting (0.44 s ahead at 1,000 tokens/s)."""
    # A batch of 64 tokens drains in 0.064 s: below the target, which then decides.
    config = AdmissionConfig(queue_delay_target_s=0.1, queue_delay_deadline_share=0.1)
    scheduler, backend = blocked(config, max_batch_tokens=64)
    scheduler.admission.drain.rate = 1000.0  # tokens/s, as if measured
    tasks = [asyncio.create_task(scheduler.run(windows(4)))]
    tasks += [asyncio.create_task(scheduler.run(windows(20, marker=2000 + 100 * i))) for i in range(2)]
    await settle()
    scheduler.admission.mean_tokens = 150.0  # as if measured
    return scheduler, backend, tasks


async def test_under_overload_only_work_that_can_start_soon_is_admitted():
    scheduler, backend, tasks = await overloaded_scheduler()
    now = time.monotonic()
    for _ in range(30):
        scheduler.admission.arrivals.arrived(now)  # 30 requests of ~150 tokens in 3 s: 1,500 tokens/s
    assert scheduler.admission.overloaded(now)
    with pytest.raises(RouterError) as caught:
        await scheduler.run(windows(1, marker=5000), deadline=time.monotonic() + 2.0)  # may wait 0.2 s
    assert caught.value.reason == "QUEUE_FULL" and "overloaded" in caught.value.message
    assert caught.value.retry_after_s > 0
    with pytest.raises(RouterError):  # refused before any tokenizing, from what is queued
        scheduler.precheck("", time.monotonic() + 2.0)
    patient = asyncio.create_task(scheduler.run(windows(1, marker=6000), deadline=time.monotonic() + 60))
    no_deadline = asyncio.create_task(scheduler.run(windows(1, marker=7000)))
    await settle()
    assert scheduler.queue.requests == 4  # both admitted: 6 s of a 60 s deadline, or no deadline
    backend.gate.set()
    await asyncio.gather(*tasks, patient, no_deadline)


async def test_under_overload_half_a_batch_may_wait_beyond_what_is_in_flight():
    # Batches of 200 tokens at 1,000 tokens/s; 160 tokens in flight and 80 waiting: 0.24 s ahead, past
    # the 0.2 s a 2 s deadline allows. The queue beyond the batch in flight holds less than half a
    # batch, so the batch former would next have little to choose from by length: admitted.
    config = AdmissionConfig(queue_delay_target_s=0.1, queue_delay_deadline_share=0.1)
    scheduler, backend = blocked(config, max_batch_tokens=200)
    scheduler.admission.drain.rate = 1000.0
    tasks = [asyncio.create_task(scheduler.run(windows(4, length=40)))]  # 160 tokens, in flight
    tasks.append(asyncio.create_task(scheduler.run(windows(2, length=40, marker=2000))))  # 80 wait
    await settle()
    scheduler.admission.mean_tokens = 150.0
    now = time.monotonic()
    for _ in range(30):
        scheduler.admission.arrivals.arrived(now)
    assert scheduler.admission.overloaded(now)
    tasks.append(asyncio.create_task(scheduler.run(windows(1, length=30, marker=3000), deadline=now + 2.0)))
    await settle()
    assert scheduler.queue.requests == 2  # admitted: 110 tokens now wait
    with pytest.raises(RouterError) as caught:  # 0.27 s ahead: past in flight + half a batch (0.26 s)
        await scheduler.run(windows(1, marker=4000), deadline=time.monotonic() + 2.0)
    assert caught.value.reason == "QUEUE_FULL" and "overloaded" in caught.value.message
    backend.gate.set()
    await asyncio.gather(*tasks)


async def test_a_long_queue_that_keeps_up_is_left_to_the_deadline_rule():
    scheduler, backend, tasks = await overloaded_scheduler()
    now = time.monotonic()
    for _ in range(15):
        scheduler.admission.arrivals.arrived(now)  # 18 in 3 s, 150 tokens each: 900 tokens/s, it keeps up
    assert not scheduler.admission.overloaded(now)
    late = asyncio.create_task(scheduler.run(windows(1, marker=5000), deadline=time.monotonic() + 2.0))
    await settle()
    assert scheduler.queue.requests == 3  # 0.44 s ahead, 2 s given: admitted
    backend.gate.set()
    await asyncio.gather(*tasks, late)


def test_the_drain_rate_prefers_time_when_work_was_waiting():
    drain = DrainRate(smoothing=1.0, min_span_s=0.5)
    drain.started(0.0)
    drain.finished(100, 0.5, still_inflight=0)  # light load: a small batch's overheads, 200 tokens/s
    assert drain.rate == pytest.approx(200)
    drain.started(1.0)
    drain.finished(300, 1.1, still_inflight=1, waiting=True)  # from here on the model is kept busy
    drain.finished(300, 1.4, still_inflight=1, waiting=True)
    drain.finished(300, 1.7, still_inflight=0, waiting=False)
    assert drain.saturated_rate == pytest.approx(600 / 0.6)
    assert drain.rate == drain.saturated_rate


def test_failed_batches_do_not_slow_the_drain_rate():
    drain = DrainRate(smoothing=1.0, min_span_s=0.5)
    drain.started(0.0)
    drain.finished(1000, 0.5, still_inflight=0)
    assert drain.rate == pytest.approx(2000)
    drain.started(1.0)
    drain.finished(0, 6.0, still_inflight=0)  # a shard hung for 5 s and failed: no tokens, no time
    drain.started(7.0)
    drain.finished(0, 7.1, still_inflight=1, waiting=True)  # refused at once while another batch runs
    drain.finished(1000, 7.7, still_inflight=0)
    assert drain.busy_rate == pytest.approx(1000 / 0.6)  # not 1,000 tokens over 5.7 s


async def test_a_busy_rate_from_small_batches_alone_refuses_nothing_on_a_deadline():
    """A model seen only with one-text calls has a busy rate that is mostly per-batch overhead (on CI a
    10,000-token request was then refused as needing 160 s). Until a rate is measured while work waited,
    deadlines are left to the caller and to expiry in the queue."""
    scheduler, backend = blocked(AdmissionConfig())
    scheduler.admission.drain.busy_rate = 10.0  # tokens/s, from tiny batches
    assert scheduler.admission.drain.saturated_rate is None
    task = asyncio.create_task(scheduler.run(windows(10), deadline=time.monotonic() + 5.0))  # 100 tokens
    await settle()
    assert backend.inflight == 1  # admitted, not refused as needing 10 s
    backend.gate.set()
    await task
    scheduler.admission.drain.saturated_rate = 10.0  # measured while work waited: now it is trusted
    with pytest.raises(RouterError) as caught:
        await scheduler.run(windows(10, marker=2000), deadline=time.monotonic() + 5.0)
    assert caught.value.reason == "DEADLINE_TOO_SHORT"


async def test_a_full_queue_refuses_sheddable_work_first_and_still_admits_critical_work():
    from router.core.criticality import Criticality

    scheduler, backend = blocked(AdmissionConfig(max_queued_tokens=100))
    first = asyncio.create_task(scheduler.run(windows(4)))  # leaves at once
    usual = asyncio.create_task(scheduler.run(windows(6, marker=2000)))  # 60 tokens wait
    await settle()
    with pytest.raises(RouterError) as caught:  # 60 + 10 > half the bound
        await scheduler.run(windows(1, marker=3000), criticality=Criticality.SHEDDABLE)
    assert caught.value.reason == "QUEUE_FULL"
    more = asyncio.create_task(scheduler.run(windows(4, marker=4000)))  # 100: the bound, default work
    await settle()
    with pytest.raises(RouterError):
        await scheduler.run(windows(1, marker=5000))  # default work: full
    critical = windows(9, length=11, marker=6000)  # told apart from the rest by length
    critical = asyncio.create_task(scheduler.run(critical, criticality=Criticality.CRITICAL))
    await settle()
    assert scheduler.pending_tokens == 199  # critical work counts only critical work against 2 x the bound
    backend.gate.set()
    await asyncio.gather(first, usual, more, critical)
    assert 11 in backend.batches[1]  # the first batch after the one in flight: the critical request's


def test_a_principal_capped_at_a_criticality_gets_at_most_that():
    from router.core.auth import Caller, Principal
    from router.core.criticality import Criticality

    capped = Caller(Principal("batch-jobs", "jobs", max_criticality=Criticality.SHEDDABLE), "jobs")
    assert capped.criticality(Criticality.CRITICAL) is Criticality.SHEDDABLE
    usual = Caller(Principal("search", "search", max_criticality=Criticality.DEFAULT), "search")
    assert usual.criticality(Criticality.CRITICAL) is Criticality.DEFAULT
    assert usual.criticality(Criticality.SHEDDABLE) is Criticality.SHEDDABLE


async def test_a_batch_asks_the_server_for_the_priority_of_its_most_critical_request():
    import dataclasses

    from router.core.criticality import Criticality

    backend = FakeBackend()
    leveled = ModelScheduler(dataclasses.replace(contract(), priority_levels=3), backend, BatchingConfig())
    await leveled.run(windows(1), criticality=Criticality.CRITICAL)
    await leveled.run(windows(1, marker=2000))
    await leveled.run(windows(1, marker=3000), criticality=Criticality.SHEDDABLE)
    plain = ModelScheduler(contract(), backend, BatchingConfig())
    await plain.run(windows(1, marker=4000), criticality=Criticality.CRITICAL)
    assert backend.priorities == [1, 2, 3, 0]  # a model without levels gets the server's default


async def test_a_critical_turn_leaves_in_a_batch_of_critical_work_alone_and_is_not_refused_as_overload():
    from router.core.criticality import Criticality

    scheduler, backend = blocked(AdmissionConfig(shed_on_deadline=False), max_batch_tokens=64)
    first = asyncio.create_task(scheduler.run(windows(4)))  # takes the one slot
    await settle()
    usual = asyncio.create_task(scheduler.run(windows(3, length=12, marker=2000)))
    critical = asyncio.create_task(scheduler.run(windows(1, length=11, marker=3000), criticality=Criticality.CRITICAL))
    await settle()
    scheduler.admission.overloaded = lambda now: True  # the short-queue rule refuses what would wait long
    scheduler.admission.drain.rate = 1.0  # ... and the 87 tokens ahead drain past any target (floor: 72)
    deadline = time.monotonic() + 60
    with pytest.raises(RouterError) as refused:
        await scheduler.run(windows(1, marker=5000), deadline=deadline)
    assert refused.value.reason == "QUEUE_FULL"
    late = windows(1, length=11, marker=4000)
    late = asyncio.create_task(scheduler.run(late, deadline=deadline, criticality=Criticality.CRITICAL))
    await settle()
    backend.gate.set()
    await asyncio.gather(first, usual, critical, late)
    assert list(backend.batches[1]) == [11, 11]  # both critical requests, without the default work beside them
