"""EmbedStream: a list too big for one message, sent in parts, answered part by part in order, under the
same admission as Embed calls."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from router.observability import metrics
from tests.helpers import EMBED_MODEL, details_of, router_settings

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]


def texts(count: int, seed: int) -> list[str]:
    """Distinct short texts (the output cache must not answer them)."""
    rng = np.random.default_rng(seed)
    return [f"{i} " + " ".join(rng.choice(WORDS, size=6)) for i in range(count)]


def parts_of(inputs: list[str], size: int, **first):
    for start in range(0, len(inputs), size):
        options = first if start == 0 else {}
        yield pb.EmbedStreamRequest(request=pb.EmbedRequest(inputs=inputs[start : start + size], **options))


def test_parts_come_back_in_order_with_the_embeddings_embed_gives(stub):
    inputs = texts(2_000, seed=1)
    replies = list(stub.EmbedStream(parts_of(inputs, 100, model=EMBED_MODEL), timeout=300))
    assert [r.offset for r in replies] == list(range(0, 2_000, 100))
    streamed = np.array([e.values for r in replies for e in r.response.embeddings], dtype=np.float32)
    assert streamed.shape == (2_000, 384)
    sample = [0, 777, 1_999]
    alone = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=[inputs[i] for i in sample]), timeout=60)
    assert np.allclose(streamed[sample], [e.values for e in alone.embeddings], atol=1e-5)
    assert all(r.response.model_version == "1" and r.response.usage.batches >= 1 for r in replies)


def test_the_first_part_sets_the_options_for_every_part(stub):
    inputs = texts(30, seed=2)
    replies = list(stub.EmbedStream(parts_of(inputs, 10, model=EMBED_MODEL, encoding=pb.ENCODING_INT8), timeout=120))
    assert len(replies) == 3 and all(r.response.encoding == pb.ENCODING_INT8 for r in replies)
    assert all(len(e.data) == 384 and not e.values for r in replies for e in r.response.embeddings)


def test_a_later_part_that_sets_an_option_is_refused_by_name_after_the_parts_before(stub):
    def parts():
        yield pb.EmbedStreamRequest(request=pb.EmbedRequest(model=EMBED_MODEL, inputs=["one", "two"]))
        yield pb.EmbedStreamRequest(request=pb.EmbedRequest(inputs=["three"], truncation=pb.TRUNCATION_END))

    received = []
    with pytest.raises(grpc.RpcError) as caught:
        for reply in stub.EmbedStream(parts(), timeout=60):
            received.append(reply)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT and details.info.reason == "INVALID_VALUE"
    assert "part[1].request.truncation" in details.fields
    assert [r.offset for r in received] in ([], [0])  # the first part may have been answered already


def test_a_stream_with_no_part_or_a_model_it_may_not_use_is_refused(stub):
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.EmbedStream(iter([]), timeout=30))
    assert details_of(caught.value).info.reason == "EMPTY_INPUTS"
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.EmbedStream(parts_of(["x"], 1, model="no-such-model"), timeout=30))
    assert details_of(caught.value).code is grpc.StatusCode.NOT_FOUND


def test_parts_refused_by_admission_wait_their_turn_instead_of_failing_the_stream(triton):
    """Three streams at once against a model that queues one request: parts are refused (QUEUE_FULL,
    counted in the shed metric) and wait their retry delay; every stream completes."""
    shed = metrics.SHED.labels(EMBED_MODEL, "QUEUE_FULL")
    before = shed._value.get()
    outcomes: list = []
    settings = router_settings(triton, queue_max_requests=1)
    with LocalRouter(settings) as target, grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)

        def stream(seed: int) -> None:
            try:
                replies = list(stub.EmbedStream(parts_of(texts(400, seed), 50, model=EMBED_MODEL), timeout=300))
                outcomes.append(sum(len(r.response.embeddings) for r in replies))
            except grpc.RpcError as error:
                outcomes.append(error.code())

        threads = [threading.Thread(target=stream, args=(10 + i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    assert outcomes == [400, 400, 400]
    assert shed._value.get() > before  # admission did refuse parts: they waited and ran again


def test_a_hundred_thousand_inputs_in_parts(triton):
    """100,000 inputs, none of them in a message over 2 MB: 1,000 distinct texts each sent 100 times in a
    shuffled order, in parts of 1,000, as raw float32 bytes. Every row is its text's embedding, in input
    order; the output cache (on here) answers the repeats, so Triton computes about a thousand sequences,
    not a hundred thousand (what is under test is the stream, not the model's speed)."""
    distinct = texts(1_000, seed=5)
    rng = np.random.default_rng(6)
    order = rng.permutation(np.repeat(np.arange(1_000), 100))
    inputs = [distinct[i] for i in order]
    settings = router_settings(triton, cache_max_bytes=64 << 20)
    with LocalRouter(settings) as target, grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        reference = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=distinct), timeout=300)
        expected = np.array([e.values for e in reference.embeddings], dtype=np.float32)
        parts = parts_of(inputs, 1_000, model=EMBED_MODEL, encoding=pb.ENCODING_FLOAT32_BYTES)
        rows, offsets, computed, largest = [], [], 0, 0
        for reply in stub.EmbedStream(parts, timeout=600):
            offsets.append(reply.offset)
            largest = max(largest, reply.ByteSize())
            computed += reply.response.usage.sequences - reply.response.usage.cached_sequences
            rows += [np.frombuffer(e.data, dtype="<f4") for e in reply.response.embeddings]
    assert offsets == list(range(0, 100_000, 1_000))
    streamed = np.stack(rows)
    assert streamed.shape == (100_000, 384)
    assert np.allclose(streamed, expected[order], atol=1e-5)
    assert largest < 2 << 20
    assert computed <= 3_000  # the repeats came from the cache (parts in flight may compute a few twice)
