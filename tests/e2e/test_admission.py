"""Admission control against a real Triton: bounded loopback load, honest answers, fairness, deadlines."""

from __future__ import annotations

import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.corpus import mixed_texts, text_of
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from tests.helpers import EMBED_MODEL, details_of, router_settings


@pytest.fixture(scope="module")
def guarded(triton):
    """A router with a small queue (12,000 tokens: under two seconds of work here; 16 requests) and one
    rate-limited tenant."""
    settings = router_settings(
        triton,
        queue_max_tokens=12_000,
        queue_max_requests=16,
        tenants={"limited": {"requests_per_s": 1, "burst_s": 2}},
    )
    with LocalRouter(settings) as target, grpc.insecure_channel(target) as channel:
        yield pb_grpc.ModelRouterServiceStub(channel), channel


def call(stub, texts, tenant="", timeout=120.0):
    """Return (code, reply or error details) instead of raising."""
    try:
        reply = stub.Embed(
            pb.EmbedRequest(model=EMBED_MODEL, inputs=texts), timeout=timeout, metadata=(("x-tenant-id", tenant),)
        )
        return grpc.StatusCode.OK, reply
    except grpc.RpcError as error:
        return error.code(), details_of(error)


def assert_healthy(stub, channel):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    code, answer = call(stub, ["still here"])
    assert code is grpc.StatusCode.OK and len(answer.embeddings) == 1


def test_overload_sheds_fast_with_retry_info_and_every_admitted_request_succeeds(guarded):
    stub, channel = guarded
    batches = [mixed_texts(8, 60, 100, seed=100 + i) for i in range(48)]
    with ThreadPoolExecutor(max_workers=48) as pool:
        outcomes = list(pool.map(lambda texts: call(stub, texts), batches))
    codes = [code for code, _ in outcomes]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) > 0 and codes.count(grpc.StatusCode.OK) > 0
    for code, answer in outcomes:
        if code is grpc.StatusCode.OK:
            vectors = np.array([e.values for e in answer.embeddings])
            assert vectors.shape == (8, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        else:
            assert answer.info.reason == "QUEUE_FULL" and "retry" in answer.kinds
            assert answer.retry.retry_delay.ToNanoseconds() > 0
    assert_healthy(stub, channel)


def test_a_noisy_tenant_does_not_starve_a_quiet_one(guarded):
    stub, channel = guarded
    noisy_batches = [mixed_texts(8, 60, 100, seed=200 + i) for i in range(40)]
    quiet_texts = mixed_texts(6, 10, 20, seed=300)
    with ThreadPoolExecutor(max_workers=41) as pool:
        noisy = [pool.submit(call, stub, texts, "noisy") for texts in noisy_batches]
        quiet = [call(stub, [text], "quiet") for text in quiet_texts]  # one after another, meanwhile
        noisy_outcomes = [future.result() for future in noisy]
    assert all(code is grpc.StatusCode.OK for code, _ in quiet), [code for code, _ in quiet]
    noisy_codes = [code for code, _ in noisy_outcomes]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in noisy_codes and grpc.StatusCode.INTERNAL not in noisy_codes
    # Served fairly, not first-come-first-served: first come first served, the first quiet call would have
    # waited behind all the noisy work admitted before it, about as long as a noisy call takes. Fair, each
    # quiet call waits for a batch to leave. (A comparison within one run, not a time limit. A noisy call's
    # own queue time is no yardstick: it counts until its first part leaves, which the batch former mixes.)
    noisy_totals = [r.timing.total.ToNanoseconds() for code, r in noisy_outcomes if code is grpc.StatusCode.OK]
    quiet_waits = [r.timing.queue.ToNanoseconds() for _, r in quiet]
    assert max(quiet_waits) < statistics.median(noisy_totals) / 2, (quiet_waits, noisy_totals)
    assert_healthy(stub, channel)


def test_a_tenant_over_its_rate_is_told_when_to_retry(guarded):
    stub, _ = guarded
    outcomes = [call(stub, ["x"], "limited") for _ in range(4)]
    refused = [answer for code, answer in outcomes if code is grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert [code for code, _ in outcomes][:2] == [grpc.StatusCode.OK, grpc.StatusCode.OK]
    assert refused and all(r.info.reason == "TENANT_RATE_LIMITED" and "retry" in r.kinds for r in refused)
    assert call(stub, ["x"], "someone-else")[0] is grpc.StatusCode.OK


def test_work_that_cannot_meet_its_deadline_is_shed_before_reaching_triton(guarded, triton):
    stub, channel = guarded
    call(stub, mixed_texts(64, 100, 200, seed=400))  # the router measures how fast the model drains
    client = triton_grpc.InferenceServerClient(triton.grpc_address)

    def inferences() -> int:
        stats = client.get_inference_statistics(EMBED_MODEL, as_json=True)
        return int(stats["model_stats"][0]["inference_stats"]["success"]["count"])

    def settled() -> int:
        """The count once Triton has counted every batch of the call before (it counts a batch after
        its answer has left, so a read right after the call can miss the last one)."""
        last = inferences()
        for _ in range(50):
            time.sleep(0.2)
            if (now := inferences()) == last:
                return now
            last = now
        raise AssertionError("Triton's inference count kept moving")

    before = settled()
    rng = random.Random(5)
    big = [text_of(250, rng) for _ in range(200)]  # ~50,000 tokens: several seconds of work here
    code, answer = call(stub, big, timeout=1.0)
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED and answer.info.reason == "DEADLINE_TOO_SHORT"
    assert settled() == before  # not one batch of it ran
    client.close()
    assert_healthy(stub, channel)
