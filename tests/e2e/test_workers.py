"""`router serve --workers 2` in front of the session's Triton: both worker processes answer on the one
port, a worker that dies is started again, and SIGTERM drains and stops every worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from adapters.triton.embedded import free_port
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.settings import PROJECT_ROOT
from tests.helpers import EMBED_MODEL, REPOSITORY, wait_for


class Served:
    """`router serve --workers 2` as a process of its own, its JSON log lines kept as they come."""

    def __init__(self, triton_address: str) -> None:
        self.port = free_port()
        environment = dict(os.environ, MODELROUTER_LOG_FORMAT="json", MODELROUTER_MODEL_REPOSITORY=str(REPOSITORY))
        command = [sys.executable, "-m", "router", "serve", "--workers", "2", "--triton", triton_address]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)],
            cwd=PROJECT_ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def logs(self, event: str) -> list[dict]:
        found = []
        for line in list(self.lines):
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found

    def workers(self) -> list[int]:
        """The parent's live children: its worker processes (read from /proc)."""
        pid = self.process.pid
        try:
            children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []
        return [child for child in children if alive(child)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def embed_on_new_connections(port: int, connections: int) -> None:
    """One call on each of `connections` separate connections (a channel of its own subchannel pool)."""
    for i in range(connections):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            reply = pb_grpc.ModelRouterServiceStub(channel).Embed(
                pb.EmbedRequest(model=EMBED_MODEL, inputs=[f"connection {i}"]), timeout=60
            )
            assert len(reply.embeddings) == 1


@pytest.fixture(scope="module")
def served(triton):
    server = Served(triton.grpc_address)
    try:
        wait_for(lambda: any("is ready on" in line for line in server.lines), "the workers to answer SERVING")
        yield server
    finally:
        if server.process.poll() is None:
            for worker in server.workers():
                os.kill(worker, signal.SIGKILL)
            server.process.kill()
        server.process.wait(30)


def test_both_workers_answer_on_the_one_port(served):
    assert len(served.workers()) == 2
    embed_on_new_connections(served.port, 16)
    wait_for(lambda: len(served.logs("rpc")) >= 16, "the calls' log lines")
    assert {line["worker"] for line in served.logs("rpc")} == {0, 1}  # 16 connections: both get some


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
