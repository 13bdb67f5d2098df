"""TLS, mutual TLS and API keys on a real router in front of the session's Triton: who may call, for which
tenant and which models, and what a caller may see (certificates are made in the test)."""

from __future__ import annotations

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from router.core import errors
from router.core.auth import hash_key, new_key
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from tests.certificates import Authority
from tests.helpers import EMBED_MODEL, RERANK_MODEL, details_of, router_settings

SEARCH_KEY, GATEWAY_KEY, ADMIN_KEY = new_key(), new_key(), new_key()
EMBED = pb.EmbedRequest(model=EMBED_MODEL, inputs=["who is calling"])


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return Authority(tmp_path_factory.mktemp("pki"), "test-ca")


@pytest.fixture(scope="module")
def tls_router(triton, ca):
    """TLS (no client certificates) with API keys."""
    server = ca.issue("router", server=True)
    principals = {
        "search": {"key_sha256": hash_key(SEARCH_KEY), "models": [EMBED_MODEL]},
        "gateway": {"key_sha256": hash_key(GATEWAY_KEY), "act_for_others": True},
        "ops": {"key_sha256": hash_key(ADMIN_KEY), "admin": True},
    }
    settings = router_settings(triton, tls_cert_file=server.cert, tls_key_file=server.key, principals=principals)
    with LocalRouter(settings) as target:
        yield target


@pytest.fixture(scope="module")
def mtls_router(triton, ca):
    """Mutual TLS: client certificates signed by the CA required; one names a principal."""
    server = ca.issue("router-m", server=True)
    principals = {"batch-jobs": {"certificate_name": "batch.internal", "tenant": "batch"}}
    settings = router_settings(
        triton,
        tls_cert_file=server.cert,
        tls_key_file=server.key,
        tls_client_ca_file=ca.cert,
        principals=principals,
    )
    with LocalRouter(settings) as target:
        yield target


def secure_stub(target: str, ca: Authority, client=None) -> tuple[grpc.Channel, pb_grpc.ModelRouterServiceStub]:
    key, chain = (client.key.read_bytes(), client.cert.read_bytes()) if client else (None, None)
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca.cert.read_bytes(), key, chain))
    return channel, pb_grpc.ModelRouterServiceStub(channel)


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def bearer(key: str, *more: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"), *more)


def test_a_plaintext_caller_is_refused_by_a_tls_router(tls_router):
    with grpc.insecure_channel(tls_router) as channel:
        error = refused(lambda: pb_grpc.ModelRouterServiceStub(channel).Embed(EMBED, timeout=5))
    assert error.code() is grpc.StatusCode.UNAVAILABLE


def test_api_keys_decide_who_calls_and_for_which_tenant(tls_router, ca):
    channel, stub = secure_stub(tls_router, ca)
    with channel:
        missing = details_of(refused(lambda: stub.Embed(EMBED, timeout=10)))
        assert missing.code is grpc.StatusCode.UNAUTHENTICATED and missing.info.reason == errors.CREDENTIALS_MISSING
        wrong = details_of(refused(lambda: stub.Embed(EMBED, metadata=bearer("mr_not-a-key"), timeout=10)))
        assert wrong.code is grpc.StatusCode.UNAUTHENTICATED and wrong.info.reason == errors.CREDENTIALS_INVALID

        assert len(stub.Embed(EMBED, metadata=bearer(SEARCH_KEY), timeout=30).embeddings) == 1
        other = pb.RerankRequest(model=RERANK_MODEL, query="q", documents=["d"])
        denied = details_of(refused(lambda: stub.Rerank(other, metadata=bearer(SEARCH_KEY), timeout=10)))
        assert denied.code is grpc.StatusCode.PERMISSION_DENIED and denied.info.reason == errors.MODEL_NOT_ALLOWED

        as_other = bearer(SEARCH_KEY, ("x-tenant-id", "someone-else"))
        spoofed = details_of(refused(lambda: stub.Embed(EMBED, metadata=as_other, timeout=10)))
        assert spoofed.code is grpc.StatusCode.PERMISSION_DENIED and spoofed.info.reason == errors.TENANT_NOT_ALLOWED
        forwarded = bearer(GATEWAY_KEY, ("x-tenant-id", "a-gateway-caller"))
        assert len(stub.Embed(EMBED, metadata=forwarded, timeout=30).embeddings) == 1


def test_only_an_admin_sees_where_models_run(tls_router, ca, triton):
    channel, stub = secure_stub(tls_router, ca)
    with channel:
        mine = stub.ListModels(pb.ListModelsRequest(), metadata=bearer(SEARCH_KEY), timeout=10)
        assert [m.name for m in mine.models] == [EMBED_MODEL]  # only the models it may use
        assert not any(m.served_by for m in mine.models)
        everything = stub.ListModels(pb.ListModelsRequest(), metadata=bearer(ADMIN_KEY), timeout=10)
        assert {EMBED_MODEL, RERANK_MODEL} <= {m.name for m in everything.models}
        assert all(list(m.served_by) == [triton.grpc_address] for m in everything.models)


def test_health_needs_no_credentials(tls_router, ca):
    channel, _ = secure_stub(tls_router, ca)
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_mutual_tls_needs_a_certificate_the_ca_signed_and_a_known_name(mtls_router, ca, tmp_path):
    channel, stub = secure_stub(mtls_router, ca)  # no client certificate
    with channel:
        assert refused(lambda: stub.Embed(EMBED, timeout=5)).code() is grpc.StatusCode.UNAVAILABLE
    rogue = Authority(tmp_path, "rogue-ca").issue("batch.internal")
    channel, stub = secure_stub(mtls_router, ca, rogue)
    with channel:
        assert refused(lambda: stub.Embed(EMBED, timeout=5)).code() is grpc.StatusCode.UNAVAILABLE

    channel, stub = secure_stub(mtls_router, ca, ca.issue("batch.internal"))
    with channel, capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        assert len(stub.Embed(EMBED, metadata=(("x-request-id", "mtls-call"),), timeout=30).embeddings) == 1
    [line] = [line for line in logs if line["event"] == "rpc" and line.get("request_id") == "mtls-call"]
    assert line["principal"] == "batch-jobs" and line["tenant"] == "batch"  # fairness and rates key on it
    channel, stub = secure_stub(mtls_router, ca, ca.issue("stranger.internal"))
    with channel:
        unknown = details_of(refused(lambda: stub.Embed(EMBED, timeout=10)))
    assert unknown.code is grpc.StatusCode.UNAUTHENTICATED and unknown.info.reason == errors.CREDENTIALS_INVALID


def test_calls_past_the_cap_are_refused_before_any_work(triton):
    from tests.helpers import GENERATE_MODEL, wait_for

    with LocalRouter(router_settings(triton, max_concurrent_rpcs=1)) as target, grpc.insecure_channel(target) as chan:
        stub = pb_grpc.ModelRouterServiceStub(chan)
        stream = stub.Generate(pb.GenerateRequest(model=GENERATE_MODEL, prompt="Count:", max_tokens=200), timeout=60)
        next(stream)  # the stream is inside the router, holding the one place
        busy = details_of(refused(lambda: stub.Embed(EMBED, timeout=10)))
        assert busy.code is grpc.StatusCode.RESOURCE_EXHAUSTED and busy.info.reason == errors.TOO_MANY_REQUESTS
        assert "retry" in busy.kinds
        stream.cancel()
        wait_for(lambda: _embeds(stub), "the place to be free again", 30)


def _embeds(stub) -> bool:
    try:
        return len(stub.Embed(EMBED, timeout=10).embeddings) == 1
    except grpc.RpcError:
        return False


def test_the_router_reaches_a_triton_that_speaks_only_mutual_tls(ca, tmp_path):
    import tritonclient.grpc as triton_grpc

    from adapters.triton.embedded import EmbeddedTriton
    from bench.harness import linked_repository

    server, client = ca.issue("triton", server=True), ca.issue("router-client")
    tls = (
        "--grpc-use-ssl=true",
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={server.cert}",
        f"--grpc-server-key={server.key}",
        f"--grpc-root-cert={ca.cert}",
    )
    repository = linked_repository(tmp_path / "repository", {EMBED_MODEL: {}})
    triton = EmbeddedTriton(repository.resolve(), log_path=tmp_path / "triton.log", extra_args=tls)
    triton.start()
    try:
        triton.wait_ready()
        plain = triton_grpc.InferenceServerClient(triton.grpc_address)
        with pytest.raises(Exception):  # noqa: B017 - tritonclient's error for a refused handshake
            plain.is_server_live(client_timeout=5)
        plain.close()
        settings = router_settings(
            triton,
            model_repository=repository,
            triton_tls_ca_file=ca.cert,
            triton_tls_cert_file=client.cert,
            triton_tls_key_file=client.key,
        )
        with LocalRouter(settings) as target, grpc.insecure_channel(target) as channel:
            reply = pb_grpc.ModelRouterServiceStub(channel).Embed(EMBED, timeout=60)
        assert len(reply.embeddings) == 1 and len(reply.embeddings[0].values) == 384
    finally:
        triton.stop()
