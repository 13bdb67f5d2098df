"""The v1 API's forms and facts, through a real router and Triton: embedding encodings, input types,
per-input usage, versions, models as resources (GetModel, ListModels pages), score types and window
offsets in code points and UTF-8 bytes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from router.core.text.quantize import Encoding, decode
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from tests.helpers import (
    EMBED_MODEL,
    GENERATE_MODEL,
    LLM_RERANK_MODEL,
    RERANK_MODEL,
    details_of,
    router_settings,
    running_triton,
)

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Vector stores keep compact embeddings.", "Hello"]
FORMS = {
    pb.ENCODING_FLOAT32_BYTES: (Encoding.FLOAT32_BYTES, "<f4"),
    pb.ENCODING_INT8: (Encoding.INT8, np.int8),
    pb.ENCODING_UINT8: (Encoding.UINT8, np.uint8),
    pb.ENCODING_BINARY: (Encoding.BINARY, np.int8),
    pb.ENCODING_UBINARY: (Encoding.UBINARY, np.uint8),
}


def embed(stub, texts=TEXTS, **fields) -> pb.EmbedResponse:
    return stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=texts, **fields), timeout=60)


def test_every_encoding_carries_the_float_vectors_in_the_documented_form(stub):
    floats = embed(stub)
    reference = np.array([e.values for e in floats.embeddings], dtype=np.float32)
    assert floats.encoding == pb.ENCODING_FLOAT and floats.dimensions == 384
    r = stub.GetModel(pb.GetModelRequest(name=EMBED_MODEL), timeout=30).model.quantization_range
    for wire, (encoding, dtype) in FORMS.items():
        reply = embed(stub, encoding=wire)
        assert reply.encoding == wire and reply.dimensions == 384
        assert all(not e.values for e in reply.embeddings)
        rows = np.stack([np.frombuffer(e.data, dtype=dtype) for e in reply.embeddings])
        width = 384 // 8 if encoding.packs_bits else 384
        assert rows.shape == (len(TEXTS), width), encoding
        back = decode(rows, encoding, r)
        if encoding is Encoding.FLOAT32_BYTES:
            assert np.array_equal(back, reference)  # the same floats, bit for bit
        elif encoding.packs_bits:
            assert np.array_equal(back, np.where(reference > 0, 1.0, -1.0))
        else:
            assert np.abs(back - np.clip(reference, -r, r)).max() <= r / 127 + 1e-6
    ubinary = np.frombuffer(embed(stub, encoding=pb.ENCODING_UBINARY).embeddings[0].data, np.uint8)
    binary = np.frombuffer(embed(stub, encoding=pb.ENCODING_BINARY).embeddings[0].data, np.int8)
    assert np.array_equal(binary.astype(np.int16), ubinary.astype(np.int16) - 128)


def test_each_input_says_what_became_of_it(stub):
    long_text = "tokens and more tokens " * 200  # ~800 tokens: three windows of 256
    reply = embed(stub, [TEXTS[0], long_text, "Hello"])
    facts = [e.usage for e in reply.embeddings]
    assert [f.windows for f in facts][0] == 1 and facts[1].windows > 1 and facts[2].windows == 1
    assert sum(f.tokens for f in facts) == reply.usage.input_tokens
    assert facts[2].tokens == 3  # [CLS] hello [SEP]
    assert not any(f.truncated for f in facts)
    cut = embed(stub, [long_text], truncation=pb.TRUNCATION_END).embeddings[0].usage
    assert cut.truncated and cut.windows == 1 and cut.tokens == facts[1].tokens
    ranked = stub.Rerank(
        pb.RerankRequest(model=RERANK_MODEL, query="tokens", documents=["short one", long_text * 2]), timeout=60
    )
    by_index = {r.index: r.usage for r in ranked.results}
    assert by_index[0].windows == 1 and by_index[1].windows > 1
    assert sum(u.tokens for u in by_index.values()) == ranked.usage.input_tokens


def test_an_input_type_the_model_does_not_declare_is_refused_by_name(stub):
    with pytest.raises(grpc.RpcError) as caught:
        embed(stub, input_type=pb.INPUT_TYPE_QUERY)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT and details.info.reason == "UNSUPPORTED_OPTION"
    assert "input_type" in details.fields and "declares none" in details.fields["input_type"]
    with pytest.raises(grpc.RpcError) as caught:
        embed(stub, encoding=99)
    assert (
        details_of(caught.value).info.reason == "UNSUPPORTED_OPTION" and "encoding" in details_of(caught.value).fields
    )


def test_responses_say_which_version_answered_and_a_request_may_pin_it(stub):
    assert embed(stub).model_version == "1"
    assert embed(stub, model_version="1").model_version == "1"
    reranked = stub.Rerank(pb.RerankRequest(model=RERANK_MODEL, query="q", documents=["d"], model_version="1"))
    assert reranked.model_version == "1"
    with pytest.raises(grpc.RpcError) as caught:
        embed(stub, model_version="7")
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.NOT_FOUND and details.info.reason == "MODEL_VERSION_NOT_FOUND"
    assert details.info.metadata["served_version"] == "1"


def test_models_are_resources_one_by_name_or_page_by_page(stub):
    everything = stub.ListModels(pb.ListModelsRequest(), timeout=30)
    names = [m.name for m in everything.models]
    assert names == sorted([EMBED_MODEL, RERANK_MODEL, GENERATE_MODEL, LLM_RERANK_MODEL])
    assert not everything.next_page_token
    paged, token = [], ""
    for _ in range(len(names) + 1):
        page = stub.ListModels(pb.ListModelsRequest(page_size=1, page_token=token), timeout=30)
        paged += [m.name for m in page.models]
        token = page.next_page_token
        if not token:
            break
    assert paged == names
    rerankers = stub.ListModels(pb.ListModelsRequest(task=pb.TASK_RERANK), timeout=30).models
    assert [m.name for m in rerankers] == [RERANK_MODEL, LLM_RERANK_MODEL]
    assert [m.score_type for m in rerankers] == [pb.SCORE_TYPE_SIMILARITY, pb.SCORE_TYPE_PROBABILITY]
    one = stub.GetModel(pb.GetModelRequest(name=EMBED_MODEL), timeout=30).model
    assert one == next(m for m in everything.models if m.name == EMBED_MODEL)
    assert list(one.versions) == ["1"] and one.quantization_range > 0 and not one.input_types
    for request, code, reason in [
        (pb.GetModelRequest(name="no-such-model"), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
        (pb.GetModelRequest(), grpc.StatusCode.INVALID_ARGUMENT, "MODEL_REQUIRED"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModel(request, timeout=30)
        assert (details_of(caught.value).code, details_of(caught.value).info.reason) == (code, reason)
    for request, field in [
        (pb.ListModelsRequest(page_token="not a token"), "page_token"),
        (pb.ListModelsRequest(page_size=-1), "page_size"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListModels(request, timeout=30)
        assert details_of(caught.value).info.reason == "INVALID_VALUE" and field in details_of(caught.value).fields


def test_the_best_window_is_placed_in_code_points_and_in_utf8_bytes(stub):
    filler = "Ünïcödé wörds für ëvery window, ñot ASCII at all. " * 40
    document = filler + "The fox jumps over the lazy dog near the riverbank. " + filler
    reply = stub.Rerank(
        pb.RerankRequest(model=RERANK_MODEL, query="fox jumps over a dog", documents=[document]), timeout=60
    )
    best = reply.results[0]
    assert best.usage.windows > 1
    in_code_points = document[best.best_window_start : best.best_window_end]
    raw = document.encode()
    assert raw[best.best_window_start_utf8 : best.best_window_end_utf8].decode() == in_code_points
    assert best.best_window_end_utf8 > best.best_window_end  # the accents take two bytes each


# --- A model that declares input types, held in two versions ------------------------------------------


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """A Triton holding the embedder, declaring E5-style prefixes, in versions 1 and 2 (2 is the newest)."""
    from bench.harness import linked_repository

    root = tmp_path_factory.mktemp("prefixed")
    prefixes = '{\\"query\\": \\"query: \\", \\"document\\": \\"passage: \\"}'
    repository = linked_repository(root / "repository", {EMBED_MODEL: {"modelrouter.input_prefixes": prefixes}})
    folder = repository / EMBED_MODEL
    (folder / "2").symlink_to((folder / "1").resolve())
    config = folder / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy: { all { } }\n")
    with running_triton(repository.resolve(), root / "triton.log", [EMBED_MODEL]) as server:
        yield server, repository


@pytest.fixture(scope="module")
def prefixed(two_versions):
    server, repository = two_versions
    settings = router_settings(server, model_repository=repository)
    with LocalRouter(settings) as target, grpc.insecure_channel(target) as channel:
        yield pb_grpc.ModelRouterServiceStub(channel)


def test_an_input_type_puts_the_models_prefix_before_the_text(prefixed):
    def vectors(texts, **fields):
        return np.array([e.values for e in embed(prefixed, texts, **fields).embeddings])

    as_query = vectors(["hello world"], input_type=pb.INPUT_TYPE_QUERY)
    assert np.allclose(as_query, vectors(["query: hello world"]), atol=1e-5)
    assert np.allclose(vectors(["hello world"], input_type=pb.INPUT_TYPE_DOCUMENT), vectors(["passage: hello world"]))
    assert not np.allclose(as_query, vectors(["hello world"]), atol=1e-3)
    reply = embed(prefixed, ["hello world"], input_type=pb.INPUT_TYPE_QUERY)
    assert reply.embeddings[0].usage.tokens == 4 + 2  # query : hello world, with [CLS] and [SEP]
    with pytest.raises(grpc.RpcError) as caught:
        embed(prefixed, ["x"], input_type=pb.INPUT_TYPE_CLUSTERING)
    assert "declares document, query" in details_of(caught.value).fields["input_type"]
    info = prefixed.GetModel(pb.GetModelRequest(name=EMBED_MODEL), timeout=30).model
    assert list(info.input_types) == [pb.INPUT_TYPE_QUERY, pb.INPUT_TYPE_DOCUMENT]


def test_every_version_held_is_listed_the_newest_answers_and_an_older_one_answers_when_named(prefixed, two_versions):
    import tritonclient.grpc as triton_grpc

    server, _ = two_versions
    info = prefixed.GetModel(pb.GetModelRequest(name=EMBED_MODEL), timeout=30).model
    assert list(info.versions) == ["2", "1"] and info.version == "2"
    client = triton_grpc.InferenceServerClient(server.grpc_address)

    def executions(version: str) -> int:
        stats = client.get_inference_statistics(EMBED_MODEL, version, as_json=True)["model_stats"][0]
        return int(stats.get("execution_count", 0))

    before = {version: executions(version) for version in ("1", "2")}
    assert embed(prefixed, ["first"]).model_version == "2"  # texts differ: none is answered from the cache
    assert embed(prefixed, ["second"], model_version="2").model_version == "2"
    assert {v: executions(v) - before[v] for v in before} == {"1": 0, "2": 2}
    older = embed(prefixed, ["y"], model_version="1")  # pinned: version 1 computes it, and says so
    assert older.model_version == "1"
    assert {v: executions(v) - before[v] for v in before} == {"1": 1, "2": 2}
    newest = embed(prefixed, ["y"])
    assert np.allclose([e.values for e in older.embeddings], [e.values for e in newest.embeddings], atol=1e-6)
    with pytest.raises(grpc.RpcError) as caught:
        embed(prefixed, ["x"], model_version="3")
    details = details_of(caught.value)
    assert details.info.reason == "MODEL_VERSION_NOT_FOUND" and "hold 2, 1" in caught.value.details()
    client.close()
