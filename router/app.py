"""The composition root: the Triton the router talks to, the model registry and the services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import prometheus_client
import structlog

from adapters.triton.backend import TritonBackend
from adapters.triton.embedded import EmbeddedTriton
from router.core.admission import AdmissionConfig, TenantLimiter, TenantLimits
from router.core.cache import OutputCache
from router.core.embed import EmbedService
from router.core.registry import ModelRegistry
from router.core.rerank import RerankService
from router.core.scheduler import SchedulerConfig
from router.core.validation import RequestLimits
from router.settings import Settings

log = structlog.get_logger(__name__)


class Router:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedTriton | None = None
        self.backend: TritonBackend | None = None
        self.registry: ModelRegistry | None = None
        self.embed: EmbedService | None = None
        self.rerank: RerankService | None = None
        self.ready = False
        self._ready_event = asyncio.Event()
        self._watch_task: asyncio.Task | None = None
        self._listeners: list[Callable[[bool], object]] = []

    def on_readiness(self, listener: Callable[[bool], object]) -> None:
        """Call `listener(ready)` whenever readiness changes (it may return an awaitable)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        s = self.settings
        if s.metrics_port is not None:
            prometheus_client.start_http_server(s.metrics_port, addr=s.host)
            log.info("router.metrics", address=f"{s.host}:{s.metrics_port}")
        addresses = list(s.triton)
        if not addresses:
            self.embedded = EmbeddedTriton(
                s.model_repository.resolve(), grpc_port=s.triton_grpc_port, log_path=s.triton_log
            )
            self.embedded.start()
            await asyncio.to_thread(self.embedded.wait_ready)
            addresses = [self.embedded.grpc_address]
        self.backend = TritonBackend(addresses, retries=s.backend_retries)
        self.registry = ModelRegistry(
            self.backend,
            s.model_repository,
            SchedulerConfig(
                max_batch_tokens=s.max_batch_tokens,
                max_inflight_batches=s.max_inflight_batches,
                min_batch_fill=s.min_batch_fill,
                max_batch_wait_s=s.max_batch_wait_s,
                timeout_s=s.backend_timeout_s,
            ),
            OutputCache(s.cache_max_bytes) if s.cache_max_bytes > 0 else None,
            AdmissionConfig(
                enabled=s.admission_enabled,
                max_queued_tokens=s.queue_max_tokens,
                max_queued_requests=s.queue_max_requests,
                shed_on_deadline=s.shed_on_deadline,
            ),
            TenantLimiter(
                TenantLimits(s.tenant_requests_per_s, s.tenant_tokens_per_s, s.tenant_burst_s),
                {name: TenantLimits(t.requests_per_s, t.tokens_per_s, t.burst_s) for name, t in s.tenants.items()},
            ),
        )
        limits = RequestLimits(
            max_inputs=s.max_inputs_per_request,
            max_tokens=s.max_tokens_per_request,
            chunk_overlap=s.chunk_overlap_tokens,
        )
        self.embed = EmbedService(self.registry, limits)
        self.rerank = RerankService(self.registry, limits)
        self._watch_task = asyncio.create_task(self._watch())

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        await asyncio.wait_for(self._ready_event.wait(), timeout_s)

    async def _watch(self) -> None:
        """Follow Triton's health and model list; readiness = Triton ready and every routed model usable."""
        while True:
            try:
                ready = await self.backend.is_ready()
                if ready:
                    await self.registry.refresh()
                    ready = bool(self.registry.models()) and not self.registry.problems
            except Exception:  # noqa: BLE001 - keep watching whatever one poll did
                log.exception("router.watch_failed")
                ready = False
            await self._set_ready(ready)
            await asyncio.sleep(self.settings.refresh_interval_s if ready else 0.5)

    async def _set_ready(self, ready: bool) -> None:
        if ready == self.ready:
            return
        self.ready = ready
        if ready:
            self._ready_event.set()
        else:
            self._ready_event.clear()
        log.info("router.readiness", ready=ready)
        for listener in self._listeners:
            result = listener(ready)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self.backend is not None:
            await self.backend.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
