"""Several real tritonservers behind one router: failover that loses nothing, a model on some shards
only, a slowed shard, and the embedded server brought back after it is killed."""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from bench.harness import linked_repository
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from router.settings import Settings
from tests.helpers import (
    EMBED_MODEL,
    GENERATE_MODEL,
    REPOSITORY,
    RERANK_MODEL,
    details_of,
    executions,
    process_group,
    running_triton,
    wait_for,
)

TEXTS = [f"passage {i}: the {'quick ' * (i % 7)}brown fox jumps over dog number {i}" for i in range(64)]


def embed(stub, texts: list[str], timeout: float = 30.0) -> np.ndarray:
    reply = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=texts), timeout=timeout)
    return np.array([e.values for e in reply.embeddings], dtype=np.float32)


def shard_back(router, address: str) -> bool:
    shard = router.backend.shards.shards[address]
    return shard.usable(time.monotonic()) and shard.holds(EMBED_MODEL)


# --- A fast shard (the session's Triton) and a slowed one that holds only the embedder ---------------


@pytest.fixture(scope="module")
def slowed_shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("slowed")
    repository = linked_repository(root / "repository", {EMBED_MODEL: {"test_delay_per_batch_s": "0.3"}})
    with running_triton(repository, root / "triton.log", [EMBED_MODEL]) as server:
        yield server


@pytest.fixture(scope="module")
def two_shards(triton, slowed_shard):
    settings = Settings(
        host="127.0.0.1", port=0, model_repository=REPOSITORY, triton=[triton.grpc_address, slowed_shard.grpc_address]
    )
    local = LocalRouter(settings)
    with local as target, grpc.insecure_channel(target) as channel:
        yield local, pb_grpc.ModelRouterServiceStub(channel)


def test_a_model_on_one_shard_is_routed_only_there(two_shards, slowed_shard):
    local, stub = two_shards
    before = executions(slowed_shard.grpc_address)
    for i in range(10):
        reply = stub.Rerank(pb.RerankRequest(model=RERANK_MODEL, query="fox", documents=TEXTS[i : i + 5]), timeout=30)
        assert len(reply.results) == 5
    assert executions(slowed_shard.grpc_address) == before  # no statistic moved on the other shard


def test_a_slowed_shard_receives_proportionally_less_work(two_shards, triton, slowed_shard):
    local, stub = two_shards
    fast_before, slow_before = executions(triton.grpc_address), executions(slowed_shard.grpc_address)

    def caller(i: int) -> None:
        for n in range(12):
            embed(stub, [f"{text} ({i}, {n})" for text in TEXTS[(i * 8) % 64 : (i * 8) % 64 + 8]])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(caller, range(8)))
    fast = executions(triton.grpc_address)[EMBED_MODEL] - fast_before[EMBED_MODEL]
    slow = executions(slowed_shard.grpc_address)[EMBED_MODEL] - slow_before[EMBED_MODEL]
    assert fast > 0
    assert slow < 0.5 * fast, f"slowed shard ran {slow} batches, the fast one {fast}"


# --- Two embedded shards, one killed under load --------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_pair(tmp_path_factory):
    log = tmp_path_factory.mktemp("pair") / "triton.log"
    settings = Settings(host="127.0.0.1", port=0, embedded_shards=2, model_repository=REPOSITORY, triton_log=log)
    local = LocalRouter(settings)
    with local as target, grpc.insecure_channel(target) as channel:
        yield local, pb_grpc.ModelRouterServiceStub(channel)


def test_one_big_request_is_spread_over_every_shard(embedded_pair):
    local, stub = embedded_pair
    shards = list(local.router.backend.shards.shards.values())
    wait_for(lambda: all(shard.usable(time.monotonic()) for shard in shards), "both shards usable")
    before = [shard.answered for shard in shards]
    documents = [f"{TEXTS[i % len(TEXTS)]} and then some more words about document {i}" for i in range(400)]
    reply = stub.Rerank(pb.RerankRequest(model=RERANK_MODEL, query="a quick fox", documents=documents), timeout=120)
    assert sorted(r.index for r in reply.results) == list(range(400))
    assert all(shard.answered > seen for shard, seen in zip(shards, before, strict=True))


def test_killing_one_shard_under_load_loses_no_call_and_it_rejoins(embedded_pair):
    local, stub = embedded_pair
    router = local.router
    reference = embed(stub, TEXTS)  # every text, computed while both shards are up
    victim = router.embedded[0]
    address, pid = victim.grpc_address, victim.pid
    outcomes: Counter = Counter()
    mismatches: list[int] = []
    answered = threading.Event()

    def caller(i: int) -> None:
        for n in range(25):
            chosen = [(i * 5 + n * 3 + k) % len(TEXTS) for k in range(8)]
            try:
                got = embed(stub, [TEXTS[c] for c in chosen])
            except grpc.RpcError as error:
                outcomes[error.code().name] += 1
                continue
            outcomes["OK"] += 1
            answered.set()
            if not np.allclose(got, reference[chosen], atol=1e-5):
                mismatches.append(n)

    with ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(caller, i) for i in range(4)]
        answered.wait(60)
        time.sleep(0.5)  # well into the load
        os.kill(pid, signal.SIGKILL)
        for call in calls:
            call.result()
    assert outcomes == Counter(OK=100), outcomes  # none failed, none lost
    assert not mismatches
    # The supervisor restarts it; its Python-backend stubs went with the killed server's process group.
    wait_for(lambda: victim.pid not in (None, pid), "the killed shard to be restarted")
    assert process_group(pid) == []
    wait_for(lambda: shard_back(router, address), "the restarted shard to rejoin")
    shard = router.backend.shards.shards[address]
    before = shard.answered
    sent = iter(range(1_000_000))

    def takes_work() -> bool:
        n = next(sent)
        embed(stub, [f"after the restart {n} {k}" for k in range(8)])
        return shard.answered > before

    # It takes work again. Not necessarily at once: its first batch after a restart is a cold one, and a
    # shard measured slow gets nothing more until that measure is stale (HealthConfig.stale_after_s), when
    # it is tried afresh.
    wait_for(takes_work, "the restarted shard to answer a batch", timeout_s=60)


def _running_streams(server) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("llm_running_streams{"))


def test_a_stream_whose_shard_dies_goes_on_unbroken_on_the_other(embedded_pair):
    local, stub = embedded_pair
    router = local.router
    shards = list(router.backend.shards.shards.values())
    wait_for(
        lambda: all(s.usable(time.monotonic()) and s.holds(GENERATE_MODEL) for s in shards),
        "both shards to serve the generation model",
    )
    request = pb.GenerateRequest(model=GENERATE_MODEL, prompt="The history of the printing press", max_tokens=48)
    expected = "".join(r.text for r in stub.Generate(request, timeout=120))  # uninterrupted, greedy
    pieces, killed, last = [], None, None
    for last in stub.Generate(request, timeout=120):
        pieces.append(last.text)
        if len(pieces) == 8:
            killed = next(server for server in router.embedded if _running_streams(server) > 0)
            os.kill(killed.pid, signal.SIGKILL)
    assert killed is not None
    assert "".join(pieces) == expected  # one stream, the same text as if nothing had happened
    assert last.finish_reason == pb.FINISH_REASON_LENGTH and last.usage.completion_tokens == 48


# --- The default: one embedded shard, killed -----------------------------------------------------------


def test_the_embedded_shard_killed_is_restarted_and_the_router_recovers(tmp_path):
    settings = Settings(host="127.0.0.1", port=0, model_repository=REPOSITORY, triton_log=tmp_path / "triton.log")
    local = LocalRouter(settings)
    with local as target, grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        embed(stub, ["before"])
        server = local.router.embedded[0]
        pid = server.pid
        os.kill(pid, signal.SIGKILL)
        refusals: list = []

        def served() -> bool:
            try:
                embed(stub, ["after"], timeout=10)
                return True
            except grpc.RpcError as error:
                refusals.append(details_of(error))
                return False

        wait_for(served, "the router to serve again")
        assert process_group(pid) == [], "processes of the killed server's group are still running"
        assert server.pid != pid
        for refused in refusals:  # while no shard held the model: retry later, said clearly
            said = (refused.code, refused.info.reason, refused.retry.retry_delay.ToMilliseconds())
            assert refused.code is grpc.StatusCode.UNAVAILABLE and refused.retry.retry_delay.ToMilliseconds() > 0, said


def test_a_dns_target_becomes_one_shard_per_address(triton):
    port = triton.grpc_address.rsplit(":", 1)[1]
    settings = Settings(host="127.0.0.1", port=0, model_repository=REPOSITORY, triton=[f"dns:///localhost:{port}"])
    local = LocalRouter(settings)
    with local as target, grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        assert embed(stub, ["found through DNS"]).shape == (1, 384)
        addresses = local.router.backend.addresses
        assert f"127.0.0.1:{port}" in addresses  # resolved to addresses, not kept as the name
        assert all(not address.startswith("localhost") for address in addresses)
