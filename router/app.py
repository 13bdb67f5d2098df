"""The composition root: the Triton the router talks to, the model registry and the services."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import prometheus_client
import structlog

from adapters.triton.backend import TritonBackend
from adapters.triton.embedded import EmbeddedTriton, Supervisor
from adapters.triton.targets import TritonTls
from router.core.auth import Authenticator, Principal
from router.core.config import AdmissionConfig, BatchingConfig, RequestLimits
from router.core.criticality import Criticality
from router.core.models.catalog import Catalog
from router.core.models.registry import ModelRegistry
from router.core.scheduling.cache import OutputCache
from router.core.scheduling.fleet_share import FleetShare
from router.core.scheduling.tenant_limits import TenantLimits, TenantRates, limiter_for
from router.core.services.embed import EmbedService
from router.core.services.generate import GenerateService
from router.core.services.pipeline import RequestPipeline
from router.core.services.rerank import RerankService
from router.observability import metrics, telemetry
from router.settings import Settings
from router.shards.picking import RetryBudget

log = structlog.get_logger(__name__)

STOPPED_RETRY_S = 5.0
"""The retry delay of calls refused once a stopping router's work is done (1 s while it drains)."""

STOP_QUIET_S = 0.25
"""A stopping router stops taking calls once none has come in for this long (RouterServer.stop)."""

STOP_QUIET_LIMIT_S = 5.0
"""... or after this long, with callers that do not heed their retry delay."""

STOP_GRACE_S = 5.0
"""Then how long calls still being answered or refused may take to end before they are cut.
A stopping router takes at most `shutdown_grace_s` + STOP_QUIET_LIMIT_S + STOP_GRACE_S."""


def core_configs(s: Settings) -> tuple[BatchingConfig, AdmissionConfig, RequestLimits]:
    """The core's configs from the settings (each checks itself; the settings were checked already)."""
    return (
        BatchingConfig(
            max_batch_tokens=s.max_batch_tokens,
            max_inflight_batches=s.max_inflight_batches,
            min_batch_fill=s.min_batch_fill,
            max_batch_wait_s=s.max_batch_wait_s,
            timeout_s=s.backend_timeout_s,
        ),
        AdmissionConfig(
            enabled=s.admission_enabled,
            max_queued_tokens=s.queue_max_tokens,
            max_queued_requests=s.queue_max_requests,
            shed_on_deadline=s.shed_on_deadline,
            overload_ratio=s.overload_ratio,
            overload_window_s=s.overload_window_s,
            queue_delay_target_s=s.queue_delay_target_s,
            queue_delay_deadline_share=s.queue_delay_deadline_share,
        ),
        RequestLimits(
            max_inputs=s.max_inputs_per_request,
            max_tokens=s.max_tokens_per_request,
            max_characters=s.max_characters_per_request,
            tokenizing_threads=s.tokenizing_threads,
            inline_tokenize_characters=s.inline_tokenize_characters,
            max_tokenizing_characters=s.max_tokenizing_characters,
            chunk_overlap=s.chunk_overlap_tokens,
        ),
    )


def principals_of(s: Settings) -> list[Principal]:
    return [
        Principal(
            name=name,
            tenant=p.tenant or name,
            models=None if p.models is None else frozenset(p.models),
            act_for_others=p.act_for_others,
            admin=p.admin,
            key_sha256=p.key_sha256,
            certificate_name=p.certificate_name,
            max_criticality=Criticality[p.max_criticality.upper()],
        )
        for name, p in s.principals.items()
    ]


def tenant_rates(s: Settings) -> TenantRates:
    """The tenants' rates the settings give: a default, and named tenants' own."""
    return TenantRates(
        TenantLimits(s.tenant_requests_per_s, s.tenant_tokens_per_s, s.tenant_burst_s),
        {name: TenantLimits(t.requests_per_s, t.tokens_per_s, t.burst_s) for name, t in s.tenants.items()},
    )


class Router:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.auth = Authenticator(principals_of(settings))
        self.embedded: list[EmbeddedTriton] = []
        self._supervisors: list[asyncio.Task] = []
        self._tracer_provider = None
        self.backend: TritonBackend | None = None
        self.registry: ModelRegistry | None = None
        self.pipeline: RequestPipeline | None = None
        self.embed: EmbedService | None = None
        self.rerank: RerankService | None = None
        self.generate: GenerateService | None = None
        self.catalog: Catalog | None = None
        self.ready = False
        self.closing = False
        self.share = FleetShare()
        """This router's part of what each Triton takes at once: with Redis, of the routers alive there."""
        self.redis = None
        """The link to the Redis the fleet shares (adapters/redis/link.py), with `redis_url`."""
        self.callers_back_by = 0.0
        """Once drained: when the callers refused while draining come back, at the latest (monotonic)."""
        self._ready_event = asyncio.Event()
        self._changed = asyncio.Event()
        self._watch_task: asyncio.Task | None = None
        self._listeners: list[Callable[[bool, dict[str, bool]], object]] = []
        self._model_health: dict[str, bool] = {}

    def knows_model(self, name: str) -> bool:
        """Whether `name` is a model the router serves or has refused (metric labels are only these)."""
        return self.registry is not None and self.registry.knows(name)

    def on_readiness(self, listener: Callable[[bool, dict[str, bool]], object]) -> None:
        """Call `listener(ready, model_health)` whenever readiness or a model's health changes (it may
        return an awaitable). `model_health` maps each routed model to whether it is served."""
        self._listeners.append(listener)

    async def start(self) -> None:
        s = self.settings
        self._tracer_provider = telemetry.configure_tracing()
        if s.metrics_port is not None:
            loop = asyncio.get_running_loop()
            metrics.ASYNCIO_TASKS.set_function(lambda: len(asyncio.all_tasks(loop)))
            prometheus_client.start_http_server(s.metrics_port, addr=s.host)
            log.info("router.observability.metrics", address=f"{s.host}:{s.metrics_port}")
        targets = list(s.triton) or await self.start_embedded()
        self.backend = TritonBackend(
            targets,
            retries=s.backend_retries,
            discovery_interval_s=s.discovery_interval_s,
            dns_interval_s=s.dns_interval_s,
            retry_budget=RetryBudget(s.retry_budget_ratio),
            balancing=s.shard_balancing,
            max_inflight_per_shard=s.max_inflight_batches,
            share=self.share,
            tls=None
            if s.triton_tls_ca_file is None
            else TritonTls(
                s.triton_tls_ca_file, s.triton_tls_cert_file, s.triton_tls_key_file, s.triton_tls_server_name
            ),
        )
        self.backend.fleet.on_change(self._changed.set)
        await self.backend.start()
        batching, admission, limits = core_configs(s)
        counts = await self._link_fleet() if s.redis_url else None
        self.registry = ModelRegistry(
            self.backend,
            s.model_repository,
            batching,
            OutputCache(s.cache_max_bytes, self._shared_rows()) if s.cache_max_bytes > 0 else None,
            admission,
            limiter_for(tenant_rates(s), counts),
            self.share,
        )
        self.pipeline = RequestPipeline(self.registry, limits)
        self.embed = EmbedService(self.pipeline)
        self.rerank = RerankService(self.pipeline)
        self.generate = GenerateService(self.pipeline)
        self.catalog = Catalog(self.registry)
        self._watch_task = asyncio.create_task(self._watch())

    async def _link_fleet(self):
        """The Redis the fleet of routers shares: its link, and tenant counts kept there."""
        from adapters.redis.link import RedisLink
        from adapters.redis.rate_limits import RedisCounts

        s = self.settings
        self.redis = RedisLink(
            s.redis_url, s.redis_timeout_s, s.redis_prefix, routers_expected=s.routers_expected, share=self.share
        )
        await self.redis.start()
        return RedisCounts(self.redis)

    def _shared_rows(self):
        """The output cache's second level in Redis, with `cache_in_redis`."""
        if not self.settings.cache_in_redis:
            return None
        from adapters.redis.cache import RedisRows

        return RedisRows(self.redis, self.settings.cache_ttl_s)

    async def start_embedded(self) -> list[str]:
        """Start `embedded_shards` tritonservers over the repository, each kept running by a supervisor."""
        s = self.settings
        for index in range(s.embedded_shards):
            log_path = s.triton_log if index == 0 else s.triton_log.with_name(f"{s.triton_log.stem}-{index}.log")
            port = s.triton_grpc_port + index if s.triton_grpc_port else 0
            trace_url = s.triton_trace_url or telemetry.triton_trace_url()
            repository = s.model_repository.resolve()
            self.embedded.append(EmbeddedTriton(repository, grpc_port=port, log_path=log_path, trace_url=trace_url))
        for server in self.embedded:
            server.start()
        for server in self.embedded:
            await asyncio.to_thread(server.wait_ready)
            self._supervisors.append(asyncio.create_task(Supervisor(server).run(), name="triton-supervisor"))
        return [server.grpc_address for server in self.embedded]

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        await asyncio.wait_for(self._ready_event.wait(), timeout_s)

    async def _watch(self) -> None:
        """Follow the shards' health and models (discovery reports each change at once; the contracts are
        read again at least every `refresh_interval_s`). Ready: a shard ready and at least one model
        served (a model with a broken config is reported on its own, and does not take the others down)."""
        while True:
            self._changed.clear()
            try:
                ready = await self.backend.is_ready()
                await self.registry.refresh()
                ready = ready and bool(self.registry.models())
            except Exception:  # noqa: BLE001 - keep watching whatever one poll did
                log.exception("router.watch_failed")
                ready = False
            await self._set_ready(ready and not self.closing, self.registry.health())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.settings.refresh_interval_s if ready else 0.5)

    async def _set_ready(self, ready: bool, models: dict[str, bool]) -> None:
        if ready == self.ready and models == self._model_health:
            return
        if ready != self.ready:
            log.info("router.readiness", ready=ready)
        self.ready, self._model_health = ready, dict(models)
        if ready:
            self._ready_event.set()
        else:
            self._ready_event.clear()
        for listener in self._listeners:
            result = listener(ready, dict(models))
            if asyncio.iscoroutine(result):
                await result

    async def shut_down(self) -> bool:
        """Stop admitting (health NOT_SERVING, new calls UNAVAILABLE with a retry delay) and give the
        requests in flight `shutdown_grace_s` to finish. Returns whether they all did."""
        self.closing = True
        if self.pipeline is None:
            return True
        self.pipeline.close()
        await self._set_ready(False, {name: False for name in self._model_health})
        log.info("router.draining", requests=self.pipeline.active, grace_s=self.settings.shutdown_grace_s)
        finished = await self.pipeline.drain(self.settings.shutdown_grace_s)
        # Nothing left to wait for: callers refused from now on are told to come back after this router
        # has gone (to another replica, or to this one restarted). Those refused while it drained come
        # back within a second, and are refused again: the server stops taking calls after that.
        self.callers_back_by = self.pipeline.refused_back_by
        self.pipeline.close(retry_after_s=STOPPED_RETRY_S)
        log.info("router.drained", finished=finished, left=self.pipeline.active)
        return finished

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self.backend is not None:
            await self.backend.close()
        if self.redis is not None:
            await self.redis.close()
        for task in self._supervisors:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(asyncio.to_thread(server.stop) for server in self.embedded))
        if self._tracer_provider is not None:
            await asyncio.to_thread(self._tracer_provider.shutdown)  # sends the spans still buffered
