"""Rerank through a real router in front of a real Triton: windows, best-window scores, big lists, errors."""

from __future__ import annotations

import random

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from bench.corpus import mixed_texts, text_of
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from tests.helpers import EMBED_MODEL, REPOSITORY, RERANK_MODEL, details_of, router_settings

QUERY = "How many people live in Berlin?"
NEEDLE = "Berlin has a population of 3.5 million registered inhabitants."
DISTRACTORS = [
    "Berlin is well known for its museums and galleries.",
    "Paris is the capital of France and its largest city.",
    "New York City is famous for the Metropolitan Museum of Art.",
    "Mix the flour with two eggs and a pinch of salt, then bake it.",
]


def rerank(stub, query, documents, **fields) -> pb.RerankResponse:
    return stub.Rerank(pb.RerankRequest(model=RERANK_MODEL, query=query, documents=documents, **fields), timeout=300)


def needle_document(seed: int = 3) -> str:
    rng = random.Random(seed)
    return f"{text_of(1500, rng)} {NEEDLE} {text_of(60, rng)}"


def test_scores_equal_the_model_run_directly(stub):
    documents = [*DISTRACTORS, NEEDLE, "", *mixed_texts(20, 5, 300, seed=4)]
    reply = rerank(stub, QUERY, documents)
    ours = {r.index: r.score for r in reply.results}

    model_dir = REPOSITORY / RERANK_MODEL
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for index, document in enumerate(documents):
        pair = tokenizer.encode(QUERY, document)
        feeds = {
            "input_ids": np.array([pair.ids], dtype=np.int64),
            "attention_mask": np.array([pair.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([pair.type_ids], dtype=np.int64),
        }
        direct = float(session.run(None, feeds)[0][0, 0])
        assert abs(ours[index] - direct) <= 1e-4, (index, ours[index], direct)
    assert reply.usage.inputs_chunked == 0 and reply.usage.sequences == len(documents)


def test_the_sanity_ordering_holds(stub):
    reply = rerank(stub, QUERY, [DISTRACTORS[3], DISTRACTORS[2], DISTRACTORS[0], NEEDLE])
    assert [r.index for r in reply.results] == [3, 2, 1, 0]


def test_a_late_needle_ranks_first_with_chunk_and_end_misses_it(stub):
    documents = [*DISTRACTORS, needle_document()]
    needle_index = len(DISTRACTORS)

    chunked = rerank(stub, QUERY, documents, truncation=pb.TRUNCATION_CHUNK, return_documents=True)
    best = chunked.results[0]
    assert best.index == needle_index
    assert NEEDLE in best.document[best.best_window_start : best.best_window_end]
    assert chunked.usage.inputs_chunked == 1 and chunked.usage.sequences > len(documents)

    cut = rerank(stub, QUERY, documents, truncation=pb.TRUNCATION_END)
    assert cut.results[0].index != needle_index
    assert cut.usage.inputs_truncated == 1 and cut.usage.sequences == len(documents)


def test_default_truncation_is_chunk_and_max_chunks_caps_windows(stub):
    documents = [needle_document()]
    default = rerank(stub, QUERY, documents)
    assert default.usage.inputs_chunked == 1 and default.usage.inputs_truncated == 0
    capped = rerank(stub, QUERY, documents, max_chunks_per_doc=2)
    assert capped.usage.sequences == 2 and capped.usage.inputs_truncated == 1
    # The needle sits past the first two windows, so the capped score is lower.
    assert capped.results[0].score < default.results[0].score


def test_five_thousand_documents_every_index_once_sorted(stub):
    documents = mixed_texts(5000, 3, 12, seed=5)
    reply = rerank(stub, QUERY, documents)
    assert sorted(r.index for r in reply.results) == list(range(5000))
    order = [(-r.score, r.index) for r in reply.results]
    assert order == sorted(order)
    assert reply.usage.sequences == 5000 and reply.usage.batches > 1


def test_top_n_returns_the_true_top_n(stub):
    documents = [*mixed_texts(150, 5, 60, seed=6), NEEDLE, *DISTRACTORS]
    full = rerank(stub, QUERY, documents)
    top = rerank(stub, QUERY, documents, top_n=7)
    assert [(r.index, r.score) for r in top.results] == [(r.index, r.score) for r in full.results[:7]]
    assert top.results[0].index == 150
    everything = rerank(stub, QUERY, documents, top_n=10_000)
    assert len(everything.results) == len(documents)


def test_long_query_is_cut_and_reported_or_rejected_under_none(stub):
    long_query = f"{QUERY} {text_of(300, random.Random(8))}"
    reply = rerank(stub, long_query, DISTRACTORS)
    assert reply.query_truncated
    with pytest.raises(grpc.RpcError) as caught:
        rerank(stub, long_query, DISTRACTORS, truncation=pb.TRUNCATION_NONE)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.info.reason == "QUERY_TOO_LONG" and "query" in details.fields
    assert not rerank(stub, QUERY, DISTRACTORS).query_truncated


def test_long_document_under_none_is_rejected_naming_it(stub):
    with pytest.raises(grpc.RpcError) as caught:
        rerank(stub, QUERY, [*DISTRACTORS, needle_document()], truncation=pb.TRUNCATION_NONE)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT and details.info.reason == "INPUT_TOO_LONG"
    assert list(details.fields) == [f"documents[{len(DISTRACTORS)}]"]
    assert details.info.metadata["max_sequence_length"] == "512"


@pytest.mark.parametrize(
    ("request_fields", "code", "reason", "field"),
    [
        ({"query": "", "documents": ["d"]}, grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_QUERY", "query"),
        ({"query": "q"}, grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_DOCUMENTS", "documents"),
        ({"query": "q", "documents": ["d"], "top_n": 0}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VALUE", "top_n"),
        (
            {"query": "q", "documents": ["d"], "max_chunks_per_doc": 0},
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_VALUE",
            "max_chunks_per_doc",
        ),
        ({"model": "nope", "query": "q", "documents": ["d"]}, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", None),
        (
            {"model": EMBED_MODEL, "query": "q", "documents": ["d"]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "WRONG_TASK",
            "model",
        ),
    ],
    ids=["empty-query", "no-documents", "top-n-zero", "max-chunks-zero", "unknown-model", "embed-model"],
)
def test_malformed_requests(stub, request_fields, code, reason, field):
    request = pb.RerankRequest(**({"model": RERANK_MODEL} | request_fields))
    with pytest.raises(grpc.RpcError) as caught:
        stub.Rerank(request, timeout=30)
    details = details_of(caught.value)
    assert details.code is code and details.info.reason == reason
    if field:
        assert field in details.fields


@pytest.fixture(scope="module")
def capped_stub(triton):
    settings = router_settings(triton, max_inputs_per_request=100, max_tokens_per_request=5_000)
    with LocalRouter(settings) as target, grpc.insecure_channel(target) as channel:
        yield pb_grpc.ModelRouterServiceStub(channel)


def test_requests_over_the_caps_get_clear_errors(capped_stub):
    with pytest.raises(grpc.RpcError) as caught:
        rerank(capped_stub, QUERY, ["d"] * 101)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT and details.info.reason == "TOO_MANY_INPUTS"
    assert details.info.metadata["max_count"] == "100" and "documents" in details.fields

    with pytest.raises(grpc.RpcError) as caught:
        rerank(capped_stub, QUERY, [needle_document(), needle_document(4), needle_document(5), needle_document(6)])
    details = details_of(caught.value)
    assert details.info.reason == "TOO_MANY_TOKENS" and details.info.metadata["max_tokens"] == "5000"

    assert len(rerank(capped_stub, QUERY, DISTRACTORS).results) == len(DISTRACTORS)


def test_list_models_shows_the_reranker(stub):
    [model] = [m for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).models if m.name == RERANK_MODEL]
    assert model.task == pb.TASK_RERANK and model.max_sequence_length == 512 and model.max_query_tokens == 128
    assert model.default_truncation == pb.TRUNCATION_CHUNK
