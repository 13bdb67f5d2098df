"""`router serve` with `workers` > 1: that many router processes serving one port, one core's worth each.

One router process runs its event loop on one core: gRPC, admission, batching and the Triton calls share
it (tokenizing big requests goes to worker threads, router/core/services/pipeline.py). To use more cores, this
parent process starts the embedded Triton (unless `triton` names servers), then `workers` router processes
(`router serve --worker-index i`), each a whole router over the same Triton servers, all bound to the same
port with SO_REUSEPORT (gRPC's default on Linux): the kernel hands each new connection to one of them.

What that means (docs/ in the README's words):
- A gRPC channel is one connection, so one client's calls all reach one worker: workers spread many
  clients (or a client with several channels), not one channel's calls.
- Each worker batches and admits on its own. Without `redis_url`, `max_inflight_batches` per shard and
  tenant rates are per worker too (a tenant limited to R requests/s may get up to workers x R); with it,
  each worker is one of the routers counted in Redis: rates hold for all of them, and each keeps its
  share of every shard's batches in flight (docs/operations.md, Many routers over one fleet).
- With `metrics_port` set, worker i serves its metrics on `metrics_port + i`.
- With `http_port` set, every worker serves the HTTP API on that port too (SO_REUSEPORT): one HTTP
  connection, like one gRPC channel, reaches one worker.

The parent restarts a worker that exits on its own (after a backoff), and on SIGTERM or Ctrl-C passes the
signal to every worker, each of which drains its calls as a single router does (`shutdown_grace_s`),
then stops the embedded Triton.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.triton.embedded import free_port
from router.app import Router
from router.settings import Settings

log = structlog.get_logger(__name__)

RESTART_BACKOFF_S = 1.0
"""The wait before a worker that exited on its own is started again (doubled while it keeps exiting)."""
MAX_RESTART_BACKOFF_S = 30.0
STOP_MARGIN_S = 15.0
"""How long past `shutdown_grace_s` a stopping worker may take before it is killed."""


def worker_environment(
    settings: Settings, triton: list[str], port: int, http_port: int | None = None
) -> dict[str, str]:
    """The environment a worker starts with: the parent's (its MODELROUTER_* variables and config file),
    plus what the parent decided: the Triton servers, the one port (and HTTP port), a single process each."""
    http = {} if http_port is None else {"MODELROUTER_HTTP_PORT": str(http_port)}
    return {
        **http,
        **os.environ,
        "MODELROUTER_TRITON": json.dumps(triton),
        "MODELROUTER_HOST": settings.host,
        "MODELROUTER_PORT": str(port),
        "MODELROUTER_WORKERS": "1",
        "MODELROUTER_MODEL_REPOSITORY": str(settings.model_repository),
        "MODELROUTER_LOG_LEVEL": settings.log_level,
        "MODELROUTER_LOG_FORMAT": settings.log_format,
    }


class WorkerPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port: int | None = None
        self.http_port: int | None = None
        self.processes: list[asyncio.subprocess.Process | None] = [None] * settings.workers
        self._restarts = [0] * settings.workers
        self._stopping = False

    async def run(
        self, stop: asyncio.Event, ready: Callable[[int, int | None], None] = lambda port, http_port: None
    ) -> None:
        """Serve until `stop` is set; `ready(port, http_port)` is called once the workers answer health SERVING."""
        s = self.settings
        owner = Router(s)  # only for its embedded Triton servers and their supervisors
        try:
            triton = list(s.triton) or await owner.start_embedded()
            self.port = s.port or free_port(s.host)
            if s.http_port is not None:
                self.http_port = s.http_port or free_port(s.host)
            environment = worker_environment(s, triton, self.port, self.http_port)
            for index in range(s.workers):
                await self._start(index, environment)
            log.info("router.workers", workers=s.workers, port=self.port, triton=triton)
            watcher = asyncio.create_task(self._watch(environment))
            waiter = asyncio.create_task(self._wait_serving(stop))
            try:
                if await waiter:
                    ready(self.port, self.http_port)
                await stop.wait()
            finally:
                waiter.cancel()
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(watcher, waiter)
            await self._stop_all()
        finally:
            await owner.stop()

    async def _start(self, index: int, environment: dict[str, str]) -> None:
        command = [sys.executable, "-m", "router", "serve", "--worker-index", str(index)]
        env = dict(environment)
        if self.settings.metrics_port is not None:
            env["MODELROUTER_METRICS_PORT"] = str(self.settings.metrics_port + index)
        self.processes[index] = await asyncio.create_subprocess_exec(*command, env=env)

    async def _watch(self, environment: dict[str, str]) -> None:
        """Start again a worker that exited on its own, after a backoff that doubles while it keeps exiting."""
        started = [time.monotonic()] * len(self.processes)
        while True:
            await asyncio.sleep(0.5)
            for index, process in enumerate(self.processes):
                if process is None or process.returncode is None or self._stopping:
                    continue
                if time.monotonic() - started[index] > MAX_RESTART_BACKOFF_S:
                    self._restarts[index] = 0  # it had run a good while: a new fault, not the same one
                delay = min(MAX_RESTART_BACKOFF_S, RESTART_BACKOFF_S * 2 ** self._restarts[index])
                log.error("router.worker_exited", worker=index, code=process.returncode, restart_in_s=delay)
                self.processes[index] = None
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                self._restarts[index] += 1
                started[index] = time.monotonic()
                await self._start(index, environment)

    async def _wait_serving(self, stop: asyncio.Event) -> bool:
        """Poll gRPC health on the port until a worker says SERVING (True), or `stop` is set (False)."""
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "", "::") else self.settings.host
        async with grpc.aio.insecure_channel(f"{host}:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                with contextlib.suppress(grpc.RpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                await asyncio.sleep(0.3)
        return False

    async def _stop_all(self) -> None:
        """SIGTERM to every worker (each drains its calls), then wait; kill one that takes too long."""
        self._stopping = True
        running = [p for p in self.processes if p is not None and p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        limit = self.settings.shutdown_grace_s + STOP_MARGIN_S
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), limit)
            except TimeoutError:
                log.error("router.worker_killed", pid=process.pid, waited_s=limit)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
