"""The HTTP API (router/http/) with the clients people already hold: the `openai` package for embeddings,
chat and completions, Cohere's own client for rerank, plain `httpx` for what neither sends. One router
serves both gRPC and HTTP over the session's Triton: each HTTP answer is compared with the gRPC one."""

from __future__ import annotations

import base64
import json
import os
import ssl

import cohere
import grpc
import httpx
import numpy as np
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.core import errors
from router.core.auth import hash_key, new_key
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from tests.certificates import Authority
from tests.e2e.test_generate import _metric as triton_metric
from tests.helpers import EMBED_MODEL, GENERATE_MODEL, RERANK_MODEL, router_settings, wait_for

TEXTS = ["A man is eating food.", "A man eats a meal.", "Stock markets fell sharply on Monday."]
QUESTION = "What is the capital of France?"
DOCUMENTS = ["Bread recipes for beginners.", "Berlin has 3.9 million inhabitants.", "Paris is in France."]
LIMITED = "limited"
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def served(triton):
    """(gRPC stub, HTTP base URL) of one router; the tenant `limited` may make one call a second."""
    settings = router_settings(
        triton, http_port=0, http_max_body_bytes=MAX_BODY, tenants={LIMITED: {"requests_per_s": 1, "burst_s": 1}}
    )
    local = LocalRouter(settings)
    with local as target, grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        wait_for(
            lambda: GENERATE_MODEL in {m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models},
            "the router to serve the generation model",
        )
        yield stub, f"http://127.0.0.1:{local.http_port}"


@pytest.fixture(scope="module")
def stub(served):
    return served[0]


@pytest.fixture(scope="module")
def base(served):
    return served[1]


@pytest.fixture(scope="module")
def client(base):
    with openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as opened:
        yield opened


def grpc_vectors(stub, texts) -> np.ndarray:
    reply = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=texts), timeout=30)
    return np.array([e.values for e in reply.embeddings], dtype=np.float32)


def grpc_text(stub, **fields) -> tuple[str, pb.GenerateResponse]:
    deltas, last = [], None
    for response in stub.Generate(pb.GenerateRequest(model=GENERATE_MODEL, **fields), timeout=120):
        deltas.append(response.text)
        last = response
    return "".join(deltas), last


# Embeddings.


def test_openai_embeddings_in_floats_and_base64_equal_the_grpc_vectors(client, stub):
    expected = grpc_vectors(stub, TEXTS)
    floats = client.embeddings.create(model=EMBED_MODEL, input=TEXTS, encoding_format="float")
    packed = client.embeddings.create(model=EMBED_MODEL, input=TEXTS)  # the client asks for base64, and decodes it
    assert [d.index for d in floats.data] == [0, 1, 2] and floats.model == EMBED_MODEL
    assert np.array_equal(np.array([d.embedding for d in floats.data], dtype=np.float32), expected)
    assert np.array_equal(np.array([d.embedding for d in packed.data], dtype=np.float32), expected)
    grpc_usage = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=TEXTS), timeout=30).usage
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == grpc_usage.input_tokens


def test_base64_is_little_endian_float32_and_one_string_is_one_input(base, stub):
    reply = httpx.post(
        f"{base}/v1/embeddings", json={"model": EMBED_MODEL, "input": TEXTS[0], "encoding_format": "base64"}
    ).json()
    [item] = reply["data"]
    vector = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    assert np.array_equal(vector, grpc_vectors(stub, TEXTS[:1])[0])


def test_token_arrays_are_the_models_own_ids(base, client, stub):
    from tokenizers import Tokenizer

    from tests.helpers import REPOSITORY

    tokenizer = Tokenizer.from_file(str(REPOSITORY / EMBED_MODEL / "tokenizer.json"))
    ids = [tokenizer.encode(text, add_special_tokens=False).ids for text in TEXTS[:2]]
    by_ids = client.embeddings.create(model=EMBED_MODEL, input=ids, encoding_format="float")
    got = np.array([d.embedding for d in by_ids.data], dtype=np.float32)
    assert np.allclose(got, grpc_vectors(stub, [t.lower() for t in TEXTS[:2]]), atol=1e-6)
    one = client.embeddings.create(model=EMBED_MODEL, input=ids[0], encoding_format="float")
    assert np.allclose(one.data[0].embedding, got[0], atol=1e-6)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=EMBED_MODEL, input=[[1, 2], [10**9]])
    assert caught.value.body["code"] == errors.INVALID_VALUE and caught.value.body["param"] == "input[1]"


def test_a_long_input_is_chunked_by_default_and_another_truncation_is_an_extension_field(client, stub):
    long_text = " ".join(["The quick brown fox jumps over the lazy dog."] * 120)  # over 512 tokens
    chunked = client.embeddings.create(model=EMBED_MODEL, input=[long_text], encoding_format="float")
    # Windows batched with other work pad differently: equal to float32's rounding, not bit for bit.
    assert np.allclose(chunked.data[0].embedding, grpc_vectors(stub, [long_text])[0], atol=1e-6)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=EMBED_MODEL, input=[long_text], extra_body={"truncation": "NONE"})
    assert caught.value.body["code"] == errors.INPUT_TOO_LONG and caught.value.body["param"].startswith("input")


# Chat and completions.


def test_chat_greedy_text_equals_grpc_generate_streamed_or_not(client, stub):
    expected, last = grpc_text(stub, messages=[pb.ChatMessage(role="user", content=QUESTION)], max_tokens=32)
    whole = client.chat.completions.create(
        model=GENERATE_MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=32
    )
    assert whole.choices[0].message.content == expected and whole.choices[0].finish_reason == "stop"
    assert whole.usage.prompt_tokens == last.usage.prompt_tokens
    assert whole.usage.completion_tokens == last.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model=GENERATE_MODEL,
            messages=[{"role": "user", "content": QUESTION}],
            max_completion_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected and "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == last.usage.completion_tokens


def test_completions_stop_at_a_stop_string_and_at_max_tokens(client, stub):
    prompt = "The three most important inventions of the nineteenth century were"
    expected, _ = grpc_text(stub, prompt=prompt, max_tokens=12)
    capped = client.completions.create(model=GENERATE_MODEL, prompt=prompt, max_tokens=12)
    assert capped.choices[0].text == expected and capped.choices[0].finish_reason == "length"
    assert capped.usage.completion_tokens == 12
    stopped = client.chat.completions.create(
        model=GENERATE_MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=64, stop=[" of Fr", "zzz"]
    )
    assert stopped.choices[0].message.content == "The capital" and stopped.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=GENERATE_MODEL, prompt=prompt, max_tokens=12, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_options_the_model_does_not_honour_are_refused_by_name(client):
    for extra, param in (
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=GENERATE_MODEL, messages=[{"role": "user", "content": "Hi"}], **extra)
        assert caught.value.body["code"] == errors.UNSUPPORTED_OPTION and caught.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=GENERATE_MODEL, messages=[{"role": "user", "content": "Hi"}], n=2)
    assert caught.value.body["param"] == "n"


def _cancelled(triton) -> float:
    return triton_metric(triton, "llm_streams_total", model=GENERATE_MODEL, outcome="cancelled")


def test_a_client_that_disconnects_cancels_the_generation_in_triton(base, triton):
    body = {"model": GENERATE_MODEL, "prompt": "Count: one, two, three,", "max_tokens": 4000}
    before = _cancelled(triton)
    with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        [next(lines) for _ in range(6)]  # a few events, then the connection is closed
    wait_for(lambda: _cancelled(triton) > before, "Triton to count the stream as cancelled", timeout_s=30)
    before = _cancelled(triton)
    with pytest.raises(httpx.ReadTimeout):  # not streamed: the client gives up, its connection closes
        httpx.post(f"{base}/v1/completions", json=body, timeout=1.5)
    wait_for(lambda: _cancelled(triton) > before, "Triton to count the unstreamed call as cancelled", timeout_s=30)


# Rerank.


def test_cohere_v2_rerank_equals_grpc_rerank(base, stub):
    expected = stub.Rerank(
        pb.RerankRequest(model=RERANK_MODEL, query="Who lives in Berlin?", documents=DOCUMENTS), timeout=30
    )
    co = cohere.ClientV2(api_key="unused", base_url=base)
    reply = co.rerank(model=RERANK_MODEL, query="Who lives in Berlin?", documents=DOCUMENTS, top_n=2)
    assert [(r.index, r.relevance_score) for r in reply.results] == [(r.index, r.score) for r in expected.results[:2]]
    assert reply.results[0].index == 1


def test_v1_rerank_takes_text_objects_and_returns_documents(base, stub):
    expected = stub.Rerank(
        pb.RerankRequest(model=RERANK_MODEL, query="French capital", documents=DOCUMENTS), timeout=30
    )
    reply = httpx.post(
        f"{base}/v1/rerank",
        json={
            "model": RERANK_MODEL,
            "query": "French capital",
            "documents": [DOCUMENTS[0], {"text": DOCUMENTS[1]}, DOCUMENTS[2]],
            "return_documents": True,
        },
    ).json()
    assert [(r["index"], r["relevance_score"]) for r in reply["results"]] == [
        (r.index, r.score) for r in expected.results
    ]
    assert all(r["document"]["text"] == DOCUMENTS[r["index"]] for r in reply["results"])
    assert reply["usage"]["total_tokens"] == expected.usage.input_tokens


# Models, health, errors.


def test_models_and_health(client, base):
    assert {EMBED_MODEL, RERANK_MODEL, GENERATE_MODEL} <= {m.id for m in client.models.list().data}
    assert client.models.retrieve(EMBED_MODEL).id == EMBED_MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert httpx.get(f"{base}/health").json() == {"status": "SERVING"}


def test_errors_carry_openai_bodies_and_the_status_a_client_acts_on(client, base):
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model="no-such-model", input="x")
    assert caught.value.body == {
        "message": caught.value.body["message"],
        "type": "not_found_error",
        "param": None,
        "code": errors.MODEL_NOT_FOUND,
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=RERANK_MODEL, input="x")
    assert caught.value.body["code"] == errors.WRONG_TASK
    malformed = httpx.post(f"{base}/v1/embeddings", content=b'{"model": ', headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == errors.MALFORMED_REQUEST
    wrong = httpx.post(f"{base}/v1/embeddings", json={"model": EMBED_MODEL, "input": [1, "x"]})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"].startswith("input")
    huge = httpx.post(f"{base}/v1/embeddings", json={"model": EMBED_MODEL, "input": "x" * (MAX_BODY + 1)})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == errors.TOO_MANY_CHARACTERS
    late = httpx.post(
        f"{base}/v1/completions",
        json={"model": GENERATE_MODEL, "prompt": "Count: one, two,", "max_tokens": 2000},
        headers={"x-request-timeout": "0.5"},
        timeout=30,
    )
    assert late.status_code == 504 and late.json()["error"]["type"] == "timeout_error"


def test_a_burst_past_the_tenants_rate_gets_429_with_retry_after_and_a_stock_client_rides_it(base):
    headers = {"x-tenant-id": LIMITED}
    refused = None
    for _ in range(4):
        reply = httpx.post(f"{base}/v1/embeddings", json={"model": EMBED_MODEL, "input": "x"}, headers=headers)
        if reply.status_code == 429:
            refused = reply
            break
    assert refused is not None, "four calls at once never passed one a second"
    assert refused.json()["error"]["code"] == errors.TENANT_RATE_LIMITED
    assert int(refused.headers["retry-after"]) >= 1 and int(refused.headers["retry-after-ms"]) > 0
    with openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=4, default_headers=headers) as patient:
        for _ in range(3):  # the client waits each Retry-After it is given, and gets through
            assert len(patient.embeddings.create(model=EMBED_MODEL, input="x").data) == 1


def test_an_unknown_route_or_method_answers_in_the_same_error_body(base):
    missing = httpx.post(f"{base}/v1/nothing-here", json={})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "ROUTE_NOT_FOUND"
    wrong = httpx.get(f"{base}/v1/embeddings")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_a_stream_holds_its_place_among_the_calls_until_it_ends(triton):
    local = LocalRouter(router_settings(triton, http_port=0, max_concurrent_rpcs=1))
    with local:
        url = f"http://127.0.0.1:{local.http_port}/v1"
        wait_for(lambda: _serves(url, GENERATE_MODEL), "the router to serve the generation model")
        body = {"model": GENERATE_MODEL, "prompt": "Count:", "max_tokens": 200, "stream": True}
        with httpx.stream("POST", f"{url}/completions", json=body, timeout=60) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()  # kept: an iterator dropped closes the response, and the stream ends
            next(lines)  # the stream is inside the router, holding the one place
            busy = httpx.post(f"{url}/embeddings", json={"model": EMBED_MODEL, "input": "x"})
            assert busy.status_code == 429 and busy.json()["error"]["code"] == errors.TOO_MANY_REQUESTS
            assert int(busy.headers["retry-after-ms"]) > 0
        wait_for(
            lambda: httpx.post(f"{url}/embeddings", json={"model": EMBED_MODEL, "input": "x"}).status_code == 200,
            "the place to be free again",
            30,
        )


def _serves(url: str, model: str) -> bool:
    return model in {m["id"] for m in httpx.get(f"{url}/models").json()["data"]}


# Security: the same TLS files and principals as gRPC.

SEARCH_KEY, OPS_KEY = new_key(), new_key()


@pytest.fixture(scope="module")
def secure(triton, tmp_path_factory):
    ca = Authority(tmp_path_factory.mktemp("http-pki"), "http-ca")
    server = ca.issue("router-http", server=True)
    principals = {
        "search": {"key_sha256": hash_key(SEARCH_KEY), "models": [EMBED_MODEL]},
        "ops": {"key_sha256": hash_key(OPS_KEY), "admin": True},
    }
    settings = router_settings(
        triton, http_port=0, tls_cert_file=server.cert, tls_key_file=server.key, principals=principals
    )
    local = LocalRouter(settings)
    with local:
        yield f"https://127.0.0.1:{local.http_port}/v1", ssl.create_default_context(cafile=str(ca.cert))


def test_api_keys_and_tls_decide_who_calls_over_http(secure):
    url, ca = secure

    opened: list[openai.OpenAI] = []

    def client(key: str) -> openai.OpenAI:
        opened.append(openai.OpenAI(base_url=url, api_key=key, max_retries=0, http_client=httpx.Client(verify=ca)))
        return opened[-1]

    try:
        _who_calls(url, ca, client)
    finally:
        for each in opened:
            each.close()


def _who_calls(url: str, ca: ssl.SSLContext, client) -> None:
    assert len(client(SEARCH_KEY).embeddings.create(model=EMBED_MODEL, input="x").data) == 1
    with pytest.raises(openai.AuthenticationError) as caught:
        client("mr_not-a-key").embeddings.create(model=EMBED_MODEL, input="x")
    assert caught.value.body["code"] == errors.CREDENTIALS_INVALID
    missing = httpx.post(f"{url}/embeddings", json={"model": EMBED_MODEL, "input": "x"}, verify=ca)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == errors.CREDENTIALS_MISSING
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client(SEARCH_KEY).chat.completions.create(model=GENERATE_MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.body["code"] == errors.MODEL_NOT_ALLOWED
    assert {m.id for m in client(SEARCH_KEY).models.list().data} == {EMBED_MODEL}
    assert len(client(OPS_KEY).models.list().data) > 1
    with pytest.raises(httpx.HTTPError):  # plaintext to a TLS listener
        httpx.post(url.replace("https", "http") + "/embeddings", json={"model": EMBED_MODEL, "input": "x"}, timeout=5)


# Fuzzing: any JSON to any route gets an answer a client can act on, never a 500. `make test` sends 60
# bodies, `make fuzz` 2,000.

HTTP_FUZZ_EXAMPLES = int(os.environ.get("HTTP_FUZZ_EXAMPLES", "60"))

ROUTES = ["/v1/embeddings", "/v1/chat/completions", "/v1/completions", "/v1/rerank", "/v2/rerank"]
FIELDS = [
    "input", "encoding_format", "dimensions", "user", "truncation", "messages", "prompt", "max_tokens",
    "temperature", "top_p", "seed", "stop", "n", "stream", "query", "documents", "top_n", "return_documents",
    "criticality", "priority", "max_tokens_per_doc", "input_type", "stream_options",
]  # fmt: skip
MODELS = [EMBED_MODEL, RERANK_MODEL, GENERATE_MODEL, "", "nope"]
scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=40)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
bodies = st.fixed_dictionaries({"model": st.sampled_from(MODELS)}, optional={f: values for f in FIELDS}) | values


@settings(max_examples=HTTP_FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_fuzzed_bodies_get_a_client_error_or_an_answer_never_a_500(base, route, body):
    reply = httpx.post(f"{base}{route}", content=json.dumps(body), headers={"x-request-timeout": "20"}, timeout=60)
    assert reply.status_code in (200, 400, 403, 404, 413, 429, 504), (reply.status_code, reply.text)
    if reply.status_code != 200:
        error = reply.json()["error"]
        assert error["code"] in errors.KINDS and error["message"] and error["type"]
