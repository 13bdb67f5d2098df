"""A stock grpcio channel with the shipped service config (protos/modelrouter/v1/service_config.json)
rides through an overload and a model server's restart with no retry code of its own: gRPC's built-in
retry policy retries UNAVAILABLE and RESOURCE_EXHAUSTED, waiting as long as the router's
grpc-retry-pushback-ms says. A caller with the adaptive throttle (router.grpc.client.throttle) stops
sending, during an overload, calls the router would refuse, and sends all again once it is over."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from router.grpc.client.throttle import REASON as CLIENT_THROTTLED
from router.grpc.client.throttle import AdaptiveThrottle, ThrottlingInterceptor
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from router.settings import PROJECT_ROOT
from tests.helpers import EMBED_MODEL, details_of, router_settings, running_triton

SERVICE_CONFIG = (PROJECT_ROOT / "protos" / "modelrouter" / "v1" / "service_config.json").read_text()
RETRYING = [("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1)]
NOT_RETRYING = [("grpc.enable_retries", 0)]
CALLERS = 8


def burst(target: str, options: list) -> Counter:
    """CALLERS calls at once, each 16 texts; how they ended."""
    outcomes: Counter = Counter()
    start = threading.Barrier(CALLERS)
    with grpc.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)

        def call(i: int) -> None:
            request = pb.EmbedRequest(model=EMBED_MODEL, inputs=[f"caller {i} text {k} " * 8 for k in range(16)])
            start.wait()
            try:
                stub.Embed(request, timeout=60)
                outcomes["OK"] += 1
            except grpc.RpcError as error:
                outcomes[error.code().name] += 1

        with ThreadPoolExecutor(CALLERS) as pool:
            list(pool.map(call, range(CALLERS)))
    return outcomes


def test_a_stock_client_with_the_service_config_rides_through_an_overload(triton):
    # A router that takes two calls at a time: a burst of eight is an overload it sheds.
    with LocalRouter(router_settings(triton, max_concurrent_rpcs=2)) as target:
        burst(target, RETRYING)  # warm
        shed = burst(target, NOT_RETRYING)
        assert shed["RESOURCE_EXHAUSTED"] > 0, shed  # without retries, some are refused
        assert burst(target, RETRYING) == Counter(OK=CALLERS)


async def test_a_throttled_caller_refuses_calls_itself_during_an_overload_and_only_then(triton):
    throttle = AdaptiveThrottle(window_s=2.0, bins=8, uniform=random.Random(5).random)
    outcomes: Counter = Counter()

    async def call(stub, i: int) -> None:
        request = pb.EmbedRequest(model=EMBED_MODEL, inputs=[f"caller {i} text {k} " * 8 for k in range(16)])
        try:
            await stub.Embed(request, timeout=60)
            outcomes["OK"] += 1
        except grpc.aio.AioRpcError as error:
            outcomes[details_of(error).info.reason] += 1  # every refusal here carries ErrorInfo

    with LocalRouter(router_settings(triton, max_concurrent_rpcs=2)) as target:
        async with grpc.aio.insecure_channel(target, interceptors=[ThrottlingInterceptor(throttle)]) as channel:
            stub = pb_grpc.ModelRouterServiceStub(channel)
            for burst in range(6):  # eight at once, to a router that takes two
                await asyncio.gather(*(call(stub, 8 * burst + i) for i in range(CALLERS)))
            assert outcomes["OK"] > 0 and outcomes["TOO_MANY_REQUESTS"] > 0, outcomes  # the router refused some
            assert outcomes[CLIENT_THROTTLED] > 0, outcomes  # and the caller stopped sending others
            assert sum(outcomes.values()) == 6 * CALLERS
            await asyncio.sleep(2.5)  # the overload left the throttle's window
            outcomes.clear()
            for i in range(10):  # one at a time: no overload, nothing refused on either side
                await call(stub, i)
            assert outcomes == Counter(OK=10)


@pytest.fixture
def lone_shard(tmp_path):
    """A model server holding only the embedder (it restarts in seconds), the router's only shard."""
    from bench.harness import linked_repository

    repository = linked_repository(tmp_path / "repository", {EMBED_MODEL: {}})
    with running_triton(repository.resolve(), tmp_path / "triton.log", [EMBED_MODEL]) as server:
        yield server, repository


def test_a_stock_client_with_the_service_config_rides_through_a_shard_restart(lone_shard):
    server, repository = lone_shard
    settings = router_settings(server, model_repository=repository)
    with LocalRouter(settings) as target, grpc.insecure_channel(target, options=RETRYING) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        request = pb.EmbedRequest(model=EMBED_MODEL, inputs=["a text to embed"])
        stub.Embed(request, timeout=30)
        os.kill(server.pid, signal.SIGKILL)  # the only model server dies...
        server.stop()
        with (
            grpc.insecure_channel(target, options=NOT_RETRYING) as plain,
            pytest.raises(grpc.RpcError) as caught,  # ...which a client without retries sees
        ):
            pb_grpc.ModelRouterServiceStub(plain).Embed(request, timeout=30)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        outcome: list = []

        def call() -> None:
            try:
                outcome.append(stub.Embed(request, timeout=60))
            except grpc.RpcError as error:
                outcome.append(error)

        caller = threading.Thread(target=call)
        caller.start()  # a call made while it is down
        server.start()  # ...and restarted on the same port
        caller.join(timeout=90)
        assert outcome and isinstance(outcome[0], pb.EmbedResponse), outcome  # answered once it was back
