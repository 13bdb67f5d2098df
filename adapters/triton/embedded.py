"""Start and stop a real `tritonserver` from the nvidia-pytriton wheel, bound to loopback.

The wheel ships the server binary, the Python backend and one Python-backend stub per Python version;
the stub must sit inside the package's own `backends/python/` folder, where it finds its bundled
libraries. The environment that starts the server decides what a `model.py` can import, so it is set
here explicitly: this interpreter's `bin/` first on PATH and its `site-packages` on PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

log = structlog.get_logger(__name__)


class EmbeddedTritonError(RuntimeError):
    """The embedded server could not be found, prepared or started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on `host` (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedTritonError("nvidia-pytriton is not installed: run `make setup`")
    return Path(spec.submodule_search_locations[0]) / "tritonserver"


def prepare_backends(root: Path) -> Path:
    """Put this Python's backend stub where the Python backend looks for it; return the backends dir."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    target = root / "backends" / "python" / "triton_python_backend_stub"
    if not stub.exists():
        raise EmbeddedTritonError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    if not target.exists() or target.stat().st_size != stub.stat().st_size:
        shutil.copy2(stub, target)
    return root / "backends"


# Niceness of the embedded server. On a machine it shares with the router, Triton's compute would
# otherwise take every core, starve the router's event loop, and leave requests (and their deadlines)
# waiting unread in socket buffers. The router needs little CPU but needs it at once.
TRITON_NICENESS = 10


def launcher(cpus: frozenset[int] | None) -> list[str]:
    """What tritonserver is started through: SIGTERM from the kernel if the router dies (util-linux's
    setpriv), lower priority (nice), and the CPUs it may use (taskset), all inherited by the model stubs.

    Commands that exec one another, not a `preexec_fn`: Python code run in a child forked from the
    router, whose gRPC threads may hold locks at that moment, can crash it (a CI run's restart of a
    model server segfaulted in a fork handler so)."""
    command = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
    command += ["nice", "-n", str(TRITON_NICENESS)]
    if cpus:
        command += ["taskset", "--cpu-list", ",".join(str(cpu) for cpu in sorted(cpus))]
    return command


@dataclass
class EmbeddedTriton:
    """A tritonserver child process serving `repository` on 127.0.0.1."""

    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    cpus: frozenset[int] | None = None
    """Pin the server and its model stubs to these CPUs (benchmarks emulate separate machines so)."""
    trace_url: str | None = None
    """An OTLP/HTTP traces URL: Triton then traces every request in OpenTelemetry mode, and a request that
    carries a W3C `traceparent` (the router sends one) has its spans in the caller's trace."""

    def __post_init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        root = pytriton_root()
        return [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={prepare_backends(root)}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            # Explicit model control: every model in the repository is loaded at start, and a deployer
            # loads, unloads or rolls one on a running server with Triton's repository API; the router
            # follows within about a second (adapters/triton/fleet.py).
            "--model-control-mode=explicit",
            "--load-model=*",
            "--log-verbose=0",
            *self._trace_args(),
            *self.extra_args,
        ]

    def _trace_args(self) -> list[str]:
        if not self.trace_url:
            return []
        settings = ["mode=opentelemetry", f"opentelemetry,url={self.trace_url}", "rate=1", "level=TIMESTAMPS"]
        settings.append("opentelemetry,resource=service.name=triton")
        return [arg for setting in settings for arg in ("--trace-config", setting)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        interpreter_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([interpreter_bin, env.get("PATH", "/usr/bin:/bin")])
        site_packages = sysconfig.get_paths()["purelib"]
        env["PYTHONPATH"] = os.pathsep.join(p for p in [site_packages, env.get("PYTHONPATH")] if p)
        return env

    def start(self) -> None:
        if not any(self.repository.glob("*/config.pbtxt")):
            raise EmbeddedTritonError(f"no model configs under {self.repository}")
        for name in ("grpc_port", "http_port", "metrics_port"):
            if getattr(self, name) == 0:
                setattr(self, name, free_port(self.host))
        command = [*launcher(self.cpus), *self.command()]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        log.info("triton.starting", grpc=self.grpc_address, repository=str(self.repository))
        self._process = subprocess.Popen(
            command,
            env=self.environment(),
            stdout=self._log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own process group: a Ctrl-C at the terminal reaches the router, which stops Triton in
            # order; the parent-death signal covers a router that dies without stopping it.
            process_group=0,
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the gRPC port accepts connections; raise if the process exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise EmbeddedTritonError(
                    f"tritonserver exited with {self._process and self._process.returncode}; its log: {self.log_path}"
                )
            try:
                with socket.create_connection((self.host, self.grpc_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        raise EmbeddedTritonError(f"tritonserver did not open {self.grpc_address} in {timeout_s:.0f}s")

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def exited(self) -> int | None:
        """The exit status if the server has stopped (None while it runs or was never started)."""
        return None if self._process is None else self._process.poll()

    def stop(self, grace_s: float = 15.0) -> None:
        """Stop the server, then end whatever is left of its process group (the Python-backend stubs,
        which outlive a killed server and ignore SIGTERM)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            log.info("triton.stopping", pid=self._process.pid)
            self._process.terminate()
            try:
                self._process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._end_group()
        self._process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _end_group(self) -> None:
        # The server leads its own process group (process_group=0), so its pid names the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)

    def __enter__(self) -> EmbeddedTriton:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Supervisor:
    """Keeps an embedded server running: a server that exits on its own is cleaned up (its whole process
    group) and started again on the same ports, after a backoff that doubles while it keeps failing (a
    server that stayed up `stable_s` starts again from the first backoff).

    A server that is still running but has stopped answering is treated the same way: one that has not
    answered Triton's liveness check (ServerLive, asked with the gRPC client the fleet polls readiness
    with) for `unresponsive_s` is killed and started again. tritonserver can abort in a way that leaves
    its process alive and its ports closed (seen on CI: "double free or corruption", then "Signal (6)
    received." and a process that stayed up, serving nothing), and waiting for it to exit would leave its
    models down for good. The check runs every `live_check_s` with a timeout of `live_timeout_s`, well
    above what a busy server takes to answer it (its front end answers it, not the model instances)."""

    def __init__(
        self,
        server: EmbeddedTriton,
        check_s: float = 0.25,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        stable_s: float = 30.0,
        live_check_s: float = 2.0,
        live_timeout_s: float = 5.0,
        unresponsive_s: float = 20.0,
    ) -> None:
        self.server = server
        self.check_s = check_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.live_check_s = live_check_s
        self.live_timeout_s = live_timeout_s
        self.unresponsive_s = unresponsive_s
        self.restarts = 0
        self._answered = time.monotonic()
        self._probed = 0.0

    async def run(self) -> None:
        # The ports stay the same across restarts, so one client serves every probe.
        client = triton_grpc.InferenceServerClient(self.server.grpc_address)
        try:
            await self._supervise(client)
        finally:
            await client.close()

    async def _supervise(self, client: triton_grpc.InferenceServerClient) -> None:
        backoff = self.backoff_s
        up_since = self._answered = time.monotonic()
        while True:
            await asyncio.sleep(self.check_s)
            status = self.server.exited()
            if status is None and not await self._unresponsive(client):
                continue
            if time.monotonic() - up_since >= self.stable_s:
                backoff = self.backoff_s
            address, grace_s = self.server.grpc_address, 15.0
            if status is None:
                log.error("triton.unresponsive", grpc=address, pid=self.server.pid, restart_in_s=backoff)
                grace_s = 0.0  # it answers nothing, a SIGTERM included: killed at once
            else:
                log.error("triton.exited", grpc=address, status=status, restart_in_s=backoff)
            await asyncio.to_thread(self.server.stop, grace_s)
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)
            try:
                self.server.start()
                await asyncio.to_thread(self.server.wait_ready)
            except EmbeddedTritonError as error:
                log.error("triton.restart_failed", grpc=self.server.grpc_address, error=str(error))
                continue
            self.restarts += 1
            up_since = self._answered = time.monotonic()
            log.info("triton.restarted", grpc=self.server.grpc_address, pid=self.server.pid, restarts=self.restarts)

    async def _unresponsive(self, client: triton_grpc.InferenceServerClient) -> bool:
        """Probe liveness (at most every `live_check_s`); True once it has not answered for `unresponsive_s`."""
        now = time.monotonic()
        if now - self._probed >= self.live_check_s:
            self._probed = now
            with contextlib.suppress(InferenceServerException):  # refused, timed out: not live
                if await client.is_server_live(client_timeout=self.live_timeout_s):
                    self._answered = time.monotonic()
        return time.monotonic() - self._answered > self.unresponsive_s
