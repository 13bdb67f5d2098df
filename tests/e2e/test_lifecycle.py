"""Models loaded, unloaded and rolled to a new version on running shards (Triton's repository API, in
explicit model-control mode), under load: the router follows and no call fails."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from contextlib import contextmanager

import grpc
import pytest
import tritonclient.grpc as triton_grpc

from bench.harness import linked_repository
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.local import LocalRouter
from router.settings import Settings
from tests.helpers import EMBED_MODEL, REPOSITORY, executions, running_triton, wait_for

LATE = "embedder-late"


@contextmanager
def load(stub, model: str, callers: int = 3):
    """Callers embedding through the router until the block ends; yields the outcomes by code."""
    outcomes: Counter = Counter()
    stop = threading.Event()

    def caller(i: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                stub.Embed(
                    pb.EmbedRequest(model=model, inputs=[f"call {i}.{n} text {k}" for k in range(4)]), timeout=30
                )
                outcomes["OK"] += 1
            except grpc.RpcError as error:
                outcomes[error.code().name] += 1
            n += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    try:
        yield outcomes
    finally:
        stop.set()
        for thread in threads:
            thread.join()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two tritonservers over one repository that also holds a second copy of the embedder under another
    name, with a version 2 beside its version 1 (the same weights) and a policy that serves only 1."""
    root = tmp_path_factory.mktemp("lifecycle")
    repository = linked_repository(root / "repository", {EMBED_MODEL: {}})
    late = repository / LATE
    (late / "1").mkdir(parents=True)
    (late / "1" / "model.onnx").symlink_to(REPOSITORY / EMBED_MODEL / "1" / "model.onnx")
    (late / "1" / "model.py").symlink_to(REPOSITORY / EMBED_MODEL / "1" / "model.py")
    (late / "2").symlink_to(late / "1")
    (late / "tokenizer.json").symlink_to(REPOSITORY / EMBED_MODEL / "tokenizer.json")
    config = (REPOSITORY / EMBED_MODEL / "config.pbtxt").read_text().replace(EMBED_MODEL, LATE)
    (late / "config.pbtxt").write_text(config + "version_policy: { specific: { versions: [1] } }\n")
    hidden = root / "not-yet"  # the late model reaches the repository after the servers started
    late.rename(hidden)
    with (
        running_triton(repository, root / "a.log", [EMBED_MODEL]) as a,
        running_triton(repository, root / "b.log", [EMBED_MODEL]) as b,
    ):
        settings = Settings(
            host="127.0.0.1", port=0, model_repository=repository, triton=[a.grpc_address, b.grpc_address]
        )
        with LocalRouter(settings) as target, grpc.insecure_channel(target) as channel:
            yield {"a": a, "b": b, "stub": pb_grpc.ModelRouterServiceStub(channel), "late": late, "hidden": hidden}


def listed_version(stub, model: str) -> str | None:
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    return next((m.version for m in listed.models if m.name == model), None)


def serve_late_model(fleet) -> float:
    """Put the late model in the repository and load it on shard a (once per fleet); return how long the
    router took to route it after Triton said it was ready (0 when it already was)."""
    stub = fleet["stub"]
    if listed_version(stub, LATE) is not None:
        return 0.0
    if fleet["hidden"].exists():
        fleet["hidden"].rename(fleet["late"])
    client = triton_grpc.InferenceServerClient(fleet["a"].grpc_address)
    client.load_model(LATE)
    assert client.is_model_ready(LATE)
    client.close()
    return wait_for(lambda: listed_version(stub, LATE) == "1", "the router to route the loaded model")


def test_a_model_loaded_on_a_shard_is_served_soon_after(fleet):
    stub = fleet["stub"]
    waited = serve_late_model(fleet)
    print(f"\nrouted {waited:.2f} s after Triton said it was ready")
    reply = stub.Embed(pb.EmbedRequest(model=LATE, inputs=["now served"]), timeout=30)
    assert len(reply.embeddings) == 1


def test_a_model_unloaded_from_one_shard_fails_no_call(fleet):
    stub, b = fleet["stub"], fleet["b"]
    client = triton_grpc.InferenceServerClient(b.grpc_address)
    with load(stub, EMBED_MODEL) as outcomes:
        wait_for(lambda: outcomes["OK"] >= 10, "calls to be answered")
        client.unload_model(EMBED_MODEL)
        wait_for(lambda: not client.is_model_ready(EMBED_MODEL), "the unload")
        time.sleep(1.5)  # the router has seen it by now (discovery polls every second)
        before = executions(b.grpc_address).get(EMBED_MODEL, 0)
        counted = outcomes["OK"]
        wait_for(lambda: outcomes["OK"] >= counted + 20, "more calls after the unload")
    assert set(outcomes) == {"OK"}, outcomes
    assert executions(b.grpc_address).get(EMBED_MODEL, 0) == before  # no more work there
    client.load_model(EMBED_MODEL)  # as it was
    client.close()


def test_rolling_a_model_to_version_2_fails_no_call(fleet):
    stub = fleet["stub"]
    serve_late_model(fleet)  # whether or not the test before ran
    client = triton_grpc.InferenceServerClient(fleet["a"].grpc_address)
    config = client.get_model_config(LATE, as_json=True)["config"]

    def serve_versions(*versions: int) -> None:
        config["version_policy"] = {"specific": {"versions": list(versions)}}
        client.load_model(LATE, config=json.dumps(config))

    with load(stub, LATE) as outcomes:
        wait_for(lambda: outcomes["OK"] >= 10, "calls to be answered")
        serve_versions(1, 2)  # load 2 beside 1
        wait_for(lambda: listed_version(stub, LATE) == "2", "the router to take version 2")
        serve_versions(2)  # then unload 1
        counted = outcomes["OK"]
        wait_for(lambda: outcomes["OK"] >= counted + 20, "more calls on version 2")
    client.close()
    assert set(outcomes) == {"OK"}, outcomes
