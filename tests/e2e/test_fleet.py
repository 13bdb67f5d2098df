"""Many routers over one fleet: two `router serve` processes over the session's Triton, sharing a real
Redis. A tenant's rate holds for the fleet (not per router), Redis dying fails no call (each router
falls back to its share of the rate, and back to Redis when it answers), and one router stopping loses
no call of the other."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import pytest

from bench.harness import RedisServer
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from tests.helpers import EMBED_MODEL, details_of, wait_for
from tests.processes import Served

RATE = 10.0
"""The tenant's requests/s, for the fleet."""


@pytest.fixture(scope="module")
def redis_outage(tmp_path_factory):
    """A Redis of this module's own, which a test may kill and start again."""
    server = RedisServer(tmp_path_factory.mktemp("redis-outage") / "redis.log").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def routers(triton, redis_outage):
    environment = {
        "MODELROUTER_REDIS_URL": redis_outage.url,
        "MODELROUTER_TENANT_REQUESTS_PER_S": str(RATE),
    }
    served = [Served([triton.grpc_address], environment=environment) for _ in range(2)]
    try:
        for router in served:
            router.wait_ready()
        wait_for(lambda: all(r.logs("redis.answering") for r in served), "both routers to reach Redis", 30)
        yield served
    finally:
        for router in served:
            router.kill()


class Pacer(threading.Thread):
    """Calls one router at `per_s` a second as `tenant`, for `seconds`; keeps (when, outcome) of each."""

    def __init__(self, target: str, tenant: str, per_s: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.target, self.tenant, self.per_s, self.seconds = target, tenant, per_s, seconds
        self.outcomes: list[tuple[float, str]] = []

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.ModelRouterServiceStub(channel)
            started = time.monotonic()
            for n in range(int(self.per_s * self.seconds)):
                time.sleep(max(0.0, started + n / self.per_s - time.monotonic()))
                try:
                    stub.Embed(
                        pb.EmbedRequest(model=EMBED_MODEL, inputs=[f"call {n}"]),
                        metadata=[("x-tenant-id", self.tenant)],
                        timeout=30,
                    )
                    outcome = "ok"
                except grpc.RpcError as error:
                    outcome = f"{error.code().name} {details_of(error).info.reason}"
                self.outcomes.append((time.monotonic() - started, outcome))


def pace(routers: list[Served], tenant: str, per_s: float, seconds: float) -> list[tuple[float, str]]:
    """`per_s` calls a second in all, split evenly over the routers."""
    pacers = [Pacer(router.target, tenant, per_s / len(routers), seconds) for router in routers]
    for pacer in pacers:
        pacer.start()
    for pacer in pacers:
        pacer.join(seconds + 60)
    return sorted(outcome for pacer in pacers for outcome in pacer.outcomes)


def pace_through(
    routers: list[Served], tenant: str, per_s: float, seconds: float, trouble: tuple, at_s: float, for_s: float
) -> list[tuple[float, str]]:
    """`pace` over the routers (their log lines read afresh), with `trouble` = (start, end): start called
    `at_s` into the run, end `for_s` later."""
    for router in routers:
        router.lines.clear()
    result: list = []
    caller = threading.Thread(target=lambda: result.extend(pace(routers, tenant, per_s, seconds)))
    caller.start()
    start, end = trouble
    time.sleep(at_s)
    start()
    time.sleep(for_s)
    end()
    caller.join(90)
    return result


def test_a_tenant_calling_both_routers_at_three_times_its_rate_gets_its_rate(routers):
    seconds = 10.0
    outcomes = pace(routers, "steady", 3 * RATE, seconds)
    assert {outcome for _, outcome in outcomes} <= {"ok", "RESOURCE_EXHAUSTED TENANT_RATE_LIMITED"}, outcomes
    # After the first window (2 s of burst allowed at the start), admitted calls come at the rate.
    admitted = sum(1 for when, outcome in outcomes if outcome == "ok" and when >= 2.0)
    assert admitted / (seconds - 2.0) == pytest.approx(RATE, rel=0.10), admitted
    for router in routers:
        assert not router.logs("tenant_limits.counting_locally")


def test_redis_dying_fails_no_call_and_the_routers_count_their_share_until_it_is_back(routers, redis_outage):
    result = pace_through(routers, "outage", 3 * RATE, 12.0, (redis_outage.kill, redis_outage.start), 3, 4)
    assert {outcome for _, outcome in result} <= {"ok", "RESOURCE_EXHAUSTED TENANT_RATE_LIMITED"}, result
    for router in routers:
        assert router.logs("redis.not_answering") and router.logs("tenant_limits.counting_locally")
        wait_for(lambda r=router: r.logs("redis.answering"), "the router to find Redis again", 10)
    # While Redis was away each router took half the rate (two routers were seen): the fleet still
    # admitted about the rate, not twice it.
    during = sum(1 for when, outcome in result if outcome == "ok" and 4.0 <= when < 7.0)
    assert during <= 3.0 * RATE * 1.2 + 2 * RATE, result
    assert any(outcome == "ok" for when, outcome in result if when >= 9.0)
    wait_for(lambda: redis_outage.client().dbsize() > 0, "the routers to count in Redis again", 10)


def test_redis_slower_than_its_timeout_fails_no_call(routers, redis_outage):
    silent = (  # alive, connected, silent: every command times out
        lambda: redis_outage.process.send_signal(signal.SIGSTOP),
        lambda: redis_outage.process.send_signal(signal.SIGCONT),
    )
    result = pace_through(routers, "slow", 2 * RATE, 8.0, silent, 2, 3)
    assert {outcome for _, outcome in result} <= {"ok", "RESOURCE_EXHAUSTED TENANT_RATE_LIMITED"}, result
    slow = [call for call in result if 2.0 <= call[0] < 5.0]
    assert slow and any(outcome == "ok" for _, outcome in slow)  # served while Redis was silent
    for router in routers:
        (down,) = router.logs("redis.not_answering")[:1]
        assert "Timeout" in down["error"], down
        wait_for(lambda r=router: r.logs("redis.answering"), "the router to find Redis again", 10)


def test_one_router_stopping_loses_no_call_of_the_other(routers):
    survivor, leaving = routers
    caller = Pacer(survivor.target, "within-its-rate", RATE * 0.8, 6.0)
    caller.start()
    time.sleep(2)
    leaving.process.send_signal(signal.SIGTERM)
    assert leaving.process.wait(60) == 0
    caller.join(60)
    assert caller.outcomes and {outcome for _, outcome in caller.outcomes} == {"ok"}


@pytest.fixture(scope="module")
def caching_routers(triton, redis_server):
    environment = {
        "MODELROUTER_REDIS_URL": redis_server.url,
        "MODELROUTER_CACHE_MAX_BYTES": str(16 << 20),
        "MODELROUTER_CACHE_IN_REDIS": "true",
    }
    served = [Served([triton.grpc_address], environment=environment) for _ in range(2)]
    try:
        for router in served:
            router.wait_ready()
        yield served
    finally:
        for router in served:
            router.kill()


def test_a_text_one_router_embedded_is_answered_from_the_shared_cache_at_the_other(caching_routers):
    first, second = caching_routers
    texts = [f"shared cache text {i}, written once" for i in range(6)]
    replies = []
    for router in (first, second):
        with grpc.insecure_channel(router.target) as channel:
            replies.append(
                pb_grpc.ModelRouterServiceStub(channel).Embed(
                    pb.EmbedRequest(model=EMBED_MODEL, inputs=texts), timeout=30
                )
            )
        time.sleep(0.5)  # the first router writes the rows to Redis off the call's path
    assert replies[0].usage.cached_sequences == 0
    assert replies[1].usage.cached_sequences == len(texts) and replies[1].usage.computed_tokens == 0
    assert [list(e.values) for e in replies[0].embeddings] == [list(e.values) for e in replies[1].embeddings]
