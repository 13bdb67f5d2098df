"""One tenant floods the router with huge requests; another tenant's small calls are slowed only by a
bounded factor: they wait for the batches already in flight and their own, not for the flood's queue.

The bound is made of figures from the same run (the small call alone, the flood's own batch time), never a
fixed number of milliseconds.
"""

from __future__ import annotations

import statistics
import threading
import time

import grpc

from bench.corpus import mixed_texts
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from tests.helpers import EMBED_MODEL, router_settings

FLOODERS = 3
HUGE = mixed_texts(300, 150, 250, seed=7)  # one request: 300 texts of 150-250 tokens, ~60,000 tokens
SMALL = mixed_texts(8, 10, 20, seed=8)


def small_calls(stub) -> list[float]:
    latencies = []
    for text in SMALL:
        started = time.perf_counter()
        stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=[text]), metadata=(("x-tenant-id", "small"),), timeout=60)
        latencies.append(time.perf_counter() - started)
    return latencies


def test_a_flood_of_huge_requests_slows_another_tenants_small_calls_by_a_bounded_factor(triton):
    settings = router_settings(triton, max_characters_per_request=2_000_000)
    with LocalRouter(settings) as target, grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        small_calls(stub)  # warm
        alone = statistics.median(small_calls(stub))

        stop = threading.Event()
        replies, refusals = [], []

        def flood() -> None:
            request = pb.EmbedRequest(model=EMBED_MODEL, inputs=HUGE)
            while not stop.is_set():
                try:
                    replies.append(stub.Embed(request, metadata=(("x-tenant-id", "flood"),), timeout=120))
                except grpc.RpcError as error:
                    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error  # shed, never broken
                    refusals.append(error)
                    time.sleep(0.2)

        threads = [threading.Thread(target=flood) for _ in range(FLOODERS)]
        for thread in threads:
            thread.start()
        time.sleep(3)  # the flood's work is queued and in flight
        during = statistics.median(small_calls(stub))
        stop.set()
        for thread in threads:
            thread.join()

    assert replies, "the flood never got through"
    # One of the flood's batches: its inference time spread over its batches, two in flight at once.
    batch_s = statistics.median(2 * r.timing.inference.ToNanoseconds() / 1e9 / r.usage.batches for r in replies)
    flood_s = statistics.median(r.timing.total.ToNanoseconds() / 1e9 for r in replies)
    print(
        f"small call alone {alone * 1000:.0f} ms, during the flood {during * 1000:.0f} ms "
        f"({during / alone:.1f}x); a flood batch {batch_s * 1000:.0f} ms, a flood request {flood_s:.1f} s"
    )
    # The small call waits for what is in flight (two batches) and runs its own: bounded by a few batches,
    # with a factor of two for the machine's noise; and nowhere near the flood's own requests.
    assert during <= 2 * (alone + 3 * batch_s)
    assert during < flood_s / 5
