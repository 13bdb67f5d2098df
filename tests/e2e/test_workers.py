"""`router serve --workers 2` in front of the session's Triton: both worker processes answer on the one
port (and the HTTP port), a worker that dies is started again, and SIGTERM drains and stops every worker."""

from __future__ import annotations

import os
import signal
import time

import grpc
import httpx
import pytest

from adapters.triton.embedded import free_port
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from tests.helpers import EMBED_MODEL, wait_for
from tests.processes import Served, alive


def embed_on_new_connections(port: int, connections: int) -> None:
    """One call on each of `connections` separate connections (a channel of its own subchannel pool)."""
    for i in range(connections):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            reply = pb_grpc.ModelRouterServiceStub(channel).Embed(
                pb.EmbedRequest(model=EMBED_MODEL, inputs=[f"connection {i}"]), timeout=60
            )
            assert len(reply.embeddings) == 1


HTTP_PORT = free_port()


@pytest.fixture(scope="module")
def served(triton):
    server = Served([triton.grpc_address], "--workers", "2", "--http-port", str(HTTP_PORT))
    try:
        yield server.wait_ready()
    finally:
        server.kill()


def test_both_workers_answer_on_the_one_port(served):
    assert len(served.workers()) == 2
    embed_on_new_connections(served.port, 16)
    wait_for(lambda: len(served.logs("rpc")) >= 16, "the calls' log lines")
    assert {line["worker"] for line in served.logs("rpc")} == {0, 1}  # 16 connections: both get some


def test_both_workers_serve_the_http_port_too(served):
    for i in range(16):  # a new connection each
        reply = httpx.post(
            f"http://127.0.0.1:{HTTP_PORT}/v1/embeddings", json={"model": EMBED_MODEL, "input": f"connection {i}"}
        )
        assert reply.status_code == 200 and len(reply.json()["data"]) == 1
    wait_for(lambda: len(served.logs("http")) >= 16, "the calls' log lines")
    assert {line["worker"] for line in served.logs("http")} == {0, 1}


def test_a_worker_that_dies_is_started_again(served):
    victim = min(served.workers())
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: served.logs("router.worker_exited"), "the parent to see the worker exit")
    wait_for(lambda: len(served.workers()) == 2 and victim not in served.workers(), "a new worker in its place", 60)
    time.sleep(5)  # the new worker reads the models and binds the port
    embed_on_new_connections(served.port, 8)  # every call answered, whichever worker takes it


def test_sigterm_drains_and_stops_every_worker(served):
    workers = served.workers()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(60) == 0
    assert not any(alive(worker) for worker in workers)
    assert len(served.logs("router.draining")) == 2  # each worker drained its calls, then stopped
