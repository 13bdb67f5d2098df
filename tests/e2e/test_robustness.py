"""What a running router does when things go wrong around it, against a real Triton: echoed values that
would blow the trailers, a shutdown with calls in flight, a model whose config the router cannot use."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.corpus import mixed_texts
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.grpc.server import model_health_name
from router.local import LocalRouter
from tests.helpers import EMBED_MODEL, REPOSITORY, details_of, router_settings, running_triton

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_100000_character_model_name_gets_not_found_within_the_trailer_limit(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(pb.EmbedRequest(model="m" * 100_000, inputs=["hello"]), timeout=30)
    details = details_of(caught.value)  # the client accepted the trailers: no "metadata size" error
    assert details.code is grpc.StatusCode.NOT_FOUND and details.info.reason == "MODEL_NOT_FOUND"
    assert len(caught.value.details()) < 300  # the name is not echoed whole


def test_ten_thousand_invalid_inputs_get_a_bounded_list_of_violations(stub):
    too_long = "a " * 260  # over 256 tokens each, in 520 characters (10,000 of them stay under the character cap)
    request = pb.EmbedRequest(model=EMBED_MODEL, inputs=[too_long] * 10_000, truncation=pb.TRUNCATION_NONE)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(request, timeout=120)
    details = details_of(caught.value)
    assert details.code is grpc.StatusCode.INVALID_ARGUMENT and details.info.reason == "INPUT_TOO_LONG"
    violations = details.bad_request.field_violations
    listed = len(violations) - 1
    assert 1 <= listed <= 20 and violations[0].field == "inputs[0]"
    assert f"{10_000 - listed} more" in violations[-1].description
    assert details.info.metadata["too_long"] == "10000"


def _health(channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_shutdown_stops_admitting_and_lets_calls_in_flight_finish(triton):
    local = LocalRouter(router_settings(triton, shutdown_grace_s=60))
    target = local.start()
    texts = mixed_texts(800, 100, 250, seed=77)  # several seconds of work here
    with grpc.insecure_channel(target) as channel, ThreadPoolExecutor(max_workers=1) as pool:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        inflight = pool.submit(stub.Embed, pb.EmbedRequest(model=EMBED_MODEL, inputs=texts), timeout=300)
        deadline = time.monotonic() + 30
        while local.router.pipeline.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert local.router.pipeline.active == 1
        stopping = threading.Thread(target=local.stop)
        stopping.start()
        while _health(channel) != NOT_SERVING:
            time.sleep(0.01)
        assert not inflight.done()
        with pytest.raises(grpc.RpcError) as caught:
            stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=["a new call"]), timeout=10)
        details = details_of(caught.value)
        assert details.code is grpc.StatusCode.UNAVAILABLE and details.info.reason == "SHUTTING_DOWN"
        assert details.retry.retry_delay.ToMilliseconds() > 0
        reply = inflight.result()  # the call in flight finished, whole
        assert len(reply.embeddings) == len(texts)
        stopping.join(timeout=60)
        assert not stopping.is_alive()


@pytest.fixture(scope="module")
def repository_with_a_broken_model(tmp_path_factory):
    """The real repository, plus a copy of the embedder whose router parameters are wrong."""
    root = tmp_path_factory.mktemp("repository")
    for model in (EMBED_MODEL,):
        (root / model).symlink_to(REPOSITORY / model)
    broken = root / "broken-embedder"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "model.onnx").symlink_to(REPOSITORY / EMBED_MODEL / "1" / "model.onnx")
    shutil.copy(REPOSITORY / EMBED_MODEL / "1" / "model.py", broken / "1" / "model.py")
    (broken / "tokenizer.json").symlink_to(REPOSITORY / EMBED_MODEL / "tokenizer.json")
    config = (REPOSITORY / EMBED_MODEL / "config.pbtxt").read_text()
    config = config.replace(f'name: "{EMBED_MODEL}"', 'name: "broken-embedder"')
    assert '"modelrouter.pooling"' in config
    config = config.replace('string_value: "mean"', 'string_value: "sideways"')
    (broken / "config.pbtxt").write_text(config)
    return root


def test_one_model_with_a_bad_config_does_not_take_the_others_down(repository_with_a_broken_model, tmp_path):
    log_path = tmp_path / "triton.log"
    with running_triton(repository_with_a_broken_model, log_path, [EMBED_MODEL, "broken-embedder"]) as server:
        settings = router_settings(server, model_repository=repository_with_a_broken_model)
        with LocalRouter(settings) as target, grpc.insecure_channel(target) as channel:
            stub = pb_grpc.ModelRouterServiceStub(channel)
            assert _health(channel) == SERVING
            assert _health(channel, model_health_name(EMBED_MODEL)) == SERVING
            assert _health(channel, model_health_name("broken-embedder")) == NOT_SERVING
            listed = stub.ListModels(pb.ListModelsRequest(), timeout=10)
            assert [m.name for m in listed.models] == [EMBED_MODEL]
            [unusable] = listed.unusable_models
            assert unusable.name == "broken-embedder" and "pooling" in unusable.problem
            reply = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=["still served"]), timeout=30)
            assert len(reply.embeddings) == 1
            with pytest.raises(grpc.RpcError) as caught:
                stub.Embed(pb.EmbedRequest(model="broken-embedder", inputs=["x"]), timeout=30)
            details = details_of(caught.value)
            assert details.code is grpc.StatusCode.UNAVAILABLE and details.info.reason == "MODEL_UNUSABLE"
