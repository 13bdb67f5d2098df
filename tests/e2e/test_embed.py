"""Embed and ListModels through a real router in front of a real Triton, on loopback."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from bench.corpus import mixed_texts, text_of
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from tests.helpers import EMBED_MODEL, details_of


def embed(stub, inputs, **fields) -> tuple[np.ndarray, pb.EmbedResponse]:
    reply = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=inputs, **fields), timeout=120)
    return np.array([e.values for e in reply.embeddings], dtype=np.float32), reply


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_embeddings_match_sentence_transformers(stub, reference_model):
    texts = [
        "A man is eating food.",
        "The quick brown fox jumps over the lazy dog.",
        "",
        *mixed_texts(30, 1, 250, seed=11),
    ]
    ours, reply = embed(stub, texts)
    reference = reference_model.encode(texts, normalize_embeddings=True)
    assert ours.shape == (len(texts), 384)
    assert cosines(ours, reference).min() >= 0.999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert reply.usage.inputs_chunked == 0 and reply.usage.inputs_truncated == 0


def test_similar_sentences_are_closer_than_unrelated(stub):
    vectors, _ = embed(stub, ["A man is eating food.", "A man eats a meal.", "The stock market fell sharply."])
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.8 > 0.2 > unrelated


def test_three_hundred_mixed_inputs_come_back_in_order(stub, reference_model):
    texts = mixed_texts(300, 1, 254, seed=7)
    ours, reply = embed(stub, texts)
    reference = reference_model.encode(texts, normalize_embeddings=True, batch_size=64)
    assert len(ours) == 300
    assert cosines(ours, reference).min() >= 0.999
    assert reply.usage.sequences == 300 and reply.usage.batches >= 2
    assert reply.usage.computed_tokens <= reply.usage.padded_tokens
    assert reply.usage.input_tokens == sum(len(t.split()) + 2 for t in texts)
    assert reply.timing.total.ToNanoseconds() > 0


def test_long_input_with_chunk_is_one_embedding_of_all_its_windows(stub):
    long_text = text_of(2000, random.Random(5))
    vectors, reply = embed(stub, [long_text], truncation=pb.TRUNCATION_CHUNK)
    assert vectors.shape == (1, 384)
    assert reply.usage.inputs_chunked == 1 and reply.usage.inputs_truncated == 0
    assert reply.usage.input_tokens == 2002
    assert reply.usage.sequences >= 8  # 2,000 tokens in windows of 254
    assert reply.usage.computed_tokens > reply.usage.input_tokens  # overlaps are computed twice
    # The combined vector stays close to the mean of the text's parts.
    parts, _ = embed(stub, [" ".join(long_text.split()[i : i + 250]) for i in range(0, 2000, 250)])
    assert float(cosines(vectors, parts.mean(axis=0, keepdims=True))[0]) > 0.95


def test_model_default_truncation_is_chunk(stub):
    _, reply = embed(stub, [text_of(600, random.Random(6))])
    assert reply.usage.inputs_chunked == 1


def test_long_input_with_none_is_rejected_naming_the_input_and_limit(stub):
    texts = ["short", text_of(2000, random.Random(5))]
    with pytest.raises(grpc.RpcError) as caught:
        embed(stub, texts, truncation=pb.TRUNCATION_NONE)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.info.reason == "INPUT_TOO_LONG"
    assert list(details.fields) == ["inputs[1]"]
    assert details.info.metadata["max_sequence_length"] == "256"
    assert "2002" in details.fields["inputs[1]"] and "256" in details.fields["inputs[1]"]


def test_end_truncation_matches_sentence_transformers_cut(stub, reference_model):
    # sentence-transformers cuts this model at 256 tokens, keeping the head: the same as END.
    text = text_of(700, random.Random(8))
    vectors, reply = embed(stub, [text], truncation=pb.TRUNCATION_END)
    assert reply.usage.inputs_truncated == 1 and reply.usage.computed_tokens == 256
    reference = reference_model.encode([text], normalize_embeddings=True)
    assert cosines(vectors, reference)[0] >= 0.999


def test_start_truncation_keeps_the_tail(stub):
    words = text_of(700, random.Random(9)).split()
    tail = " ".join(words[-254:])
    cut, reply = embed(stub, [" ".join(words)], truncation=pb.TRUNCATION_START)
    whole_tail, _ = embed(stub, [tail])
    assert reply.usage.inputs_truncated == 1
    assert cosines(cut, whole_tail)[0] >= 0.9999


def test_normalize_false_and_dimensions(stub):
    raw, _ = embed(stub, ["hello there"], normalize=False)
    unit, _ = embed(stub, ["hello there"])
    assert abs(float(np.linalg.norm(raw)) - 1.0) > 0.01
    assert cosines(raw, unit)[0] >= 0.9999
    full, _ = embed(stub, ["hello there"], dimensions=384)
    assert full.shape == (1, 384)


def test_unsupported_dimensions_is_rejected(stub):
    with pytest.raises(grpc.RpcError) as caught:
        embed(stub, ["hello"], dimensions=100)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.info.reason == "UNSUPPORTED_OPTION" and "dimensions" in details.fields


def test_unknown_model_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(pb.EmbedRequest(model="no-such-model", inputs=["x"]), timeout=30)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.NOT_FOUND and details.info.reason == "MODEL_NOT_FOUND"


def test_empty_inputs_is_invalid(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(pb.EmbedRequest(model=EMBED_MODEL), timeout=30)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.info.reason == "EMPTY_INPUTS" and "inputs" in details.fields


def test_missing_model_name_is_invalid(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(pb.EmbedRequest(inputs=["x"]), timeout=30)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT and "model" in details.fields


def test_unknown_truncation_value_is_invalid(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=["x"], truncation=42), timeout=30)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT and "truncation" in details.fields


def test_concurrent_callers_get_their_own_results(stub, reference_model):
    texts = mixed_texts(48, 1, 250, seed=21)
    reference = reference_model.encode(texts, normalize_embeddings=True)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda t: embed(stub, [t])[0][0], texts))
    assert cosines(np.stack(results), reference).min() >= 0.999


def test_list_models_reports_the_contract(stub, triton):
    reply = stub.ListModels(pb.ListModelsRequest(), timeout=30)
    [model] = [m for m in reply.models if m.name == EMBED_MODEL]
    assert model.task == pb.TASK_EMBED
    assert model.max_sequence_length == 256 and model.max_batch_size == 64
    assert model.embedding_dimensions == 384 and model.normalize
    assert model.default_truncation == pb.TRUNCATION_CHUNK
    assert set(model.supported_truncations) == {
        pb.TRUNCATION_CHUNK,
        pb.TRUNCATION_END,
        pb.TRUNCATION_START,
        pb.TRUNCATION_NONE,
    }
    assert list(model.served_by) == [triton.grpc_address]
