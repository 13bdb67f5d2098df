"""Health, reflection, and `router serve` as a person runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from adapters.triton.embedded import free_port
from router.settings import PROJECT_ROOT


def test_health_is_serving_for_the_server_and_the_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "modelrouter.v1.ModelRouterService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [reply] = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {"modelrouter.v1.ModelRouterService", "grpc.health.v1.Health"} <= names


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_router_serve_starts_triton_serves_and_stops_it_on_ctrl_c(tmp_path):
    port, http_port = free_port(), free_port()
    env = dict(os.environ, MODELROUTER_TRITON_LOG=str(tmp_path / "triton.log"))
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "serve", "--port", str(port), "--http-port", str(http_port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            status = None
            while time.monotonic() < deadline and status != health_pb2.HealthCheckResponse.SERVING:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                except grpc.RpcError:
                    time.sleep(0.5)
            assert status == health_pb2.HealthCheckResponse.SERVING
        cli = subprocess.run(
            [sys.executable, "-m", "router", "embed", "--target", f"127.0.0.1:{port}", "hello", "hi"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert "384 dims" in cli.stdout
        # The banner's HTTP one-liner, run as printed: the `openai` package against the HTTP API.
        deadline = time.monotonic() + 30
        while not any("Ctrl-C stops" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        banner = "".join(lines)
        assert f"http://127.0.0.1:{http_port}/v1" in banner
        one_liner = banner[banner.index(".venv/bin/python -c") :].split(')"\n', 1)[0] + ')"'
        answer = subprocess.run(
            ["bash", "-c", one_liner], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
        )
        assert answer.returncode == 0 and "Paris" in answer.stdout, (one_liner, answer.stdout, answer.stderr)
        [triton_pid] = _children(process.pid)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        reader.join(timeout=10)
        output = "".join(lines)
        assert process.returncode == 0, output
        assert "model-router is ready on" in output
        assert "heap.frozen" in output  # start-up's heap is left out of later garbage collections
        time.sleep(0.5)
        assert not os.path.exists(f"/proc/{triton_pid}") or _is_zombie(triton_pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_router_rerank_prints_the_documents_best_first_with_where_the_best_window_lies(router_target):
    filler = "The weather report mentions light rain over the hills and a calm sea. " * 40
    long_document = filler + "Berlin has about 3.9 million inhabitants. " + filler
    cli = subprocess.run(
        [sys.executable, "-m", "router", "rerank", "--target", router_target, "--top-n", "2",
         "How many people live in Berlin?", "A recipe for bread.", long_document, "Paris is in France."],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0].startswith("2 of 3 documents, best first")
    assert "#1  best window: characters" in lines[1]  # the long document, cut into windows, ranks first
    start, end = (int(n) for n in lines[1].split("characters ")[1].split()[0].split("-"))
    assert start > 0 and end < len(long_document)
    assert "Berlin" in long_document[start:end]
