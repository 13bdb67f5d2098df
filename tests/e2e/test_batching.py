"""Cross-request batching and the output cache, against a real Triton: results never depend on company."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from bench.corpus import mixed_texts
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from tests.helpers import EMBED_MODEL, RERANK_MODEL, details_of, router_settings

TEXT = "The committee approved the new budget after a long debate."
QUERY = "What did the committee decide about the budget?"


def embed(stub, inputs) -> np.ndarray:
    try:
        reply = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=inputs), timeout=120)
    except grpc.RpcError as error:  # say what a refusal's estimate rested on (drain rate, queue, correction)
        details = details_of(error)
        raise AssertionError(f"{details.code.name} {details.info.reason}: {dict(details.info.metadata)}") from error
    return np.array([e.values for e in reply.embeddings], dtype=np.float32)


def score_of(stub, documents, index) -> float:
    reply = stub.Rerank(pb.RerankRequest(model=RERANK_MODEL, query=QUERY, documents=documents), timeout=120)
    return next(r.score for r in reply.results if r.index == index)


def test_embedding_is_the_same_alone_in_a_batch_and_among_fifty_concurrent_requests(stub):
    alone = embed(stub, [TEXT])[0]
    others = mixed_texts(120, 1, 250, seed=31)
    in_batch = embed(stub, [*others[:40], TEXT, *others[40:80]])[40]

    def other_request(i: int) -> None:
        embed(stub, others[i : i + 1 + i % 3])

    with ThreadPoolExecutor(max_workers=16) as pool:
        background = [pool.submit(other_request, i) for i in range(50)]
        concurrent = [pool.submit(embed, stub, [TEXT]) for _ in range(5)]
        for future in background:
            future.result()
        crowd = [future.result()[0] for future in concurrent]

    for vector in (in_batch, *crowd):
        assert float(vector @ alone) >= 0.9999


def test_rerank_score_is_the_same_alone_in_a_list_and_among_concurrent_requests(stub):
    alone = score_of(stub, [TEXT], 0)
    others = mixed_texts(60, 5, 400, seed=32)
    in_list = score_of(stub, [*others[:30], TEXT, *others[30:]], 30)
    with ThreadPoolExecutor(max_workers=12) as pool:
        background = [pool.submit(score_of, stub, others[i : i + 5], 0) for i in range(0, 50, 5)]
        crowd = [pool.submit(score_of, stub, [TEXT, others[i]], 0) for i in range(4)]
        for future in background:
            future.result()
        scores = [future.result() for future in crowd]
    for score in (in_list, *scores):
        assert abs(score - alone) <= 1e-4


@pytest.fixture(scope="module")
def cached(triton):
    settings = router_settings(triton, cache_max_bytes=200 * 384 * 4)
    local = LocalRouter(settings)
    with local as target, grpc.insecure_channel(target) as channel:
        yield local, pb_grpc.ModelRouterServiceStub(channel)


def test_cache_answers_a_second_pass_with_the_same_vectors(cached):
    _, stub = cached
    texts = mixed_texts(50, 3, 120, seed=33)
    first = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=texts), timeout=120)
    second = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=texts), timeout=120)
    assert first.usage.cached_sequences == 0 and second.usage.cached_sequences == 50
    assert second.usage.computed_tokens == 0 and second.usage.batches == 0
    assert [list(e.values) for e in first.embeddings] == [list(e.values) for e in second.embeddings]
    # Options applied after the model (normalize) are not part of the key and still apply.
    raw = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=texts[:1], normalize=False), timeout=60)
    assert raw.usage.cached_sequences == 1
    assert abs(np.linalg.norm(raw.embeddings[0].values) - 1.0) > 0.01


def test_cache_stays_within_its_byte_bound(cached):
    local, stub = cached
    texts = mixed_texts(600, 3, 30, seed=34)
    stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=texts), timeout=120)
    cache = local.router.registry.cache
    assert cache.bytes <= cache.max_bytes and len(cache) == 200
