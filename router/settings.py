"""The router's one settings object: defaults < TOML file < environment (MODELROUTER_*) < CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from adapters.triton.targets import Target
from router.core.config import AdmissionConfig, BatchingConfig, RequestLimits, default
from router.core.scheduling.tenant_limits import TenantLimits
from router.event_loop import Choice as EventLoop
from router.event_loop import loop_factory

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_ENV = "MODELROUTER_CONFIG"


class TenantLimitSettings(BaseModel):
    """One tenant's rates (unset: unlimited)."""

    requests_per_s: float | None = Field(default=None, gt=0)
    tokens_per_s: float | None = Field(default=None, gt=0)
    burst_s: float = Field(default=default(TenantLimits, "burst_s"), gt=0)


class PrincipalSettings(BaseModel):
    """One identity that may call the router (router/core/auth.py). It needs a credential: the SHA-256 of
    its API key (`router keygen` makes a key and prints its hash), a name its client certificate carries
    (subject common name or a subject alternative name; needs `tls_client_ca_file`), or both."""

    model_config = {"extra": "forbid"}

    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    certificate_name: str | None = Field(default=None, min_length=1)
    tenant: str | None = Field(default=None, min_length=1)
    """The tenant its work counts against (fair shares, rates); unset: the principal's own name."""
    models: list[str] | None = None
    """The models it may call; unset: every model."""
    act_for_others: bool = False
    """May name another tenant with `x-tenant-id` (a gateway forwarding its own callers)."""
    admin: bool = False
    """Sees internals: the Triton servers behind each model in ListModels."""
    max_criticality: Literal["critical", "default", "sheddable"] = "critical"
    """The most its requests may matter under overload: one asking for more is served at this."""

    @model_validator(mode="after")
    def _credential(self) -> PrincipalSettings:
        if not self.key_sha256 and not self.certificate_name:
            raise ValueError("a principal needs key_sha256, certificate_name or both")
        return self


_B, _A, _R = BatchingConfig, AdmissionConfig, RequestLimits


class Settings(BaseSettings):
    """Every knob of the router. Set one with an environment variable MODELROUTER_<NAME>, a key in the
    TOML file named by MODELROUTER_CONFIG (or `router serve --config`), or a `router serve` flag. Values
    are checked at start-up: a bad one stops the router, naming it."""

    model_config = SettingsConfigDict(env_prefix="MODELROUTER_", extra="forbid")

    # Where the router listens.
    host: str = "127.0.0.1"
    """Address the gRPC server binds. Loopback by default; deployments set it on purpose."""
    port: int = Field(default=50051, ge=0, le=65535)
    """gRPC port; 0 picks a free one."""
    tls_cert_file: Path | None = None
    """PEM certificate chain of the router's listener; with `tls_key_file`, the listener speaks only TLS."""
    tls_key_file: Path | None = None
    """PEM private key of `tls_cert_file`."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle: when set, callers must present a client certificate it signed (mutual TLS)."""
    principals: dict[str, PrincipalSettings] = Field(default_factory=dict)
    """Who may call (authentication is off while this is empty: the embedded default on loopback). In TOML
    `[principals.search] key_sha256 = "..."`, `models = ["all-minilm-l6-v2"]`; see router/core/auth.py."""
    workers: int = Field(default=1, ge=1, le=64)
    """Router processes serving `port` together (SO_REUSEPORT), each on a core of its own with its own
    queues and limits; the embedded Triton is started once, for all (router/workers.py). One gRPC
    connection reaches one worker, so workers spread many clients, not one channel's calls."""
    max_message_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest request or response message, both ways. 64 MiB holds 5,000 documents of 2,000 tokens
    (about 10 KiB of text each) or 40,000 embeddings of 384 floats."""
    http_port: int | None = Field(default=None, ge=0, le=65535)
    """Also serve the HTTP API (OpenAI-style /v1/embeddings, /v1/chat/completions, /v1/completions,
    Cohere-style /v1/rerank and /v2/rerank, /v1/models, /health: router/http/) on host:http_port, beside
    gRPC and on the same core, limits and principals (unset: no HTTP listener; 0 picks a free port)."""
    http_max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest HTTP request body, refused with 413 before it is parsed (JSON is about twice the size of
    the same request in protobuf)."""
    http_request_timeout_s: float | None = Field(default=None, gt=0)
    """An HTTP call's deadline when it sends no `X-Request-Timeout` header (seconds; unset: none, as a
    gRPC call without a deadline)."""

    # Where the models are.
    triton: list[str] = Field(default_factory=list)
    """Existing Triton servers serving the same repository (empty: start `embedded_shards` here). Each is
    `host:port` (one server) or `dns:///host:port`: every address the name resolves to is a shard,
    re-resolved every `dns_interval_s` (a Kubernetes headless Service)."""
    embedded_shards: int = Field(default=1, ge=1, le=16)
    """With no `triton` given: how many tritonserver processes to start here, over the same repository.
    Each is restarted if it dies."""
    model_repository: Path = PROJECT_ROOT / "triton_models" / "repository"
    """The Triton model repository; the router reads each model's tokenizer file from it."""
    triton_log: Path = PROJECT_ROOT / ".run" / "triton.log"
    """Log file of the embedded Triton."""
    triton_grpc_port: int = Field(default=0, ge=0, le=65535)
    """gRPC port of the embedded Triton; 0 picks a free one."""
    triton_tls_ca_file: Path | None = None
    """PEM CA that signed the Triton servers' certificates: set, the router reaches every shard over TLS."""
    triton_tls_cert_file: Path | None = None
    """PEM client certificate the router shows Triton (mutual TLS), with `triton_tls_key_file`."""
    triton_tls_key_file: Path | None = None
    triton_tls_server_name: str | None = None
    """The name in the shards' certificate, when they are reached by IP address (`dns:///` targets)."""
    triton_trace_url: str | None = None
    """Where the embedded Triton sends its OpenTelemetry spans (an OTLP/HTTP traces URL: Triton speaks no
    other). Unset: the router's own collector (`OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`) when the
    router exports over http/protobuf; with the grpc protocol, set this to the collector's HTTP address."""
    discovery_interval_s: float = Field(default=1.0, gt=0)
    """How often each Triton is asked whether it is ready and which model versions it has (and at once
    after a batch failed there); a model loaded on a shard is routed within about this long."""
    dns_interval_s: float = Field(default=5.0, gt=0)
    """How often `dns:///` targets are resolved again."""
    refresh_interval_s: float = Field(default=5.0, gt=0)
    """Longest time between two reads of the models' contracts (any change a shard reports triggers one)."""

    # How work reaches Triton.
    max_batch_tokens: int = Field(default=default(_B, "max_batch_tokens"), gt=0)
    """Padded tokens (rows x longest row) in one batch sent to a model."""
    min_batch_fill: float = Field(default=default(_B, "min_batch_fill"), ge=0.0, le=1.0)
    """Least share of real tokens in a padded batch (a model's config may set its own)."""
    max_batch_wait_s: float = Field(default=default(_B, "max_batch_wait_s"), ge=0.0, le=1.0)
    """While other batches are in flight, hold a batch that would leave less than full up to this long
    (seconds) for more work to join; an idle model never waits. Worth a few ms on a GPU, 0 on a CPU."""
    max_inflight_batches: int = Field(default=default(_B, "max_inflight_batches"), gt=0)
    """Batches in flight to Triton per model; more pile up in the router's queue and pack better."""
    backend_timeout_s: float = Field(default=default(_B, "timeout_s"), gt=0)
    """Timeout for one batch at Triton."""
    backend_retries: int = Field(default=2, ge=0)
    """Attempts after the first for a batch that failed for reasons outside it (the shard died or is
    unreachable, its queue is full, it no longer has the model): each on another shard when there is one."""
    shard_balancing: Literal["least_work", "round_robin"] = "least_work"
    """How a batch's shard is chosen: `least_work` (power of two choices on the tokens each shard has
    outstanding times its measured seconds per token) or `round_robin` (for comparison)."""
    retry_budget_ratio: float = Field(default=0.1, ge=0, le=1)
    """Retries allowed as a share of batches (plus a reserve of 10), so a failing fleet is not stormed."""

    cache_max_bytes: int = Field(default=0, ge=0)
    """Bytes of model outputs kept in the output cache (LRU); 0 turns the cache off."""

    # Admission: what each model lets in, and each tenant.
    admission_enabled: bool = default(_A, "enabled")
    """Off: every request is queued whatever the queue holds (benchmarks compare with it)."""
    queue_max_tokens: int | None = Field(default=None, gt=0)
    """Tokens waiting per model before new work is refused with RESOURCE_EXHAUSTED; unset: 4 x the
    model's max batch size x its max sequence length (65,536 for both models here)."""
    queue_max_requests: int = Field(default=default(_A, "max_queued_requests"), gt=0)
    """Requests waiting per model before new work is refused."""
    shed_on_deadline: bool = default(_A, "shed_on_deadline")
    """Refuse at once (DEADLINE_EXCEEDED) a request that the measured drain rate says cannot finish
    before the caller's deadline."""
    overload_ratio: float = Field(default=default(_A, "overload_ratio"), gt=1)
    """The model counts as overloaded while work arrives more than this many times as fast as it drains
    when kept busy, over `overload_window_s` (router/core/scheduling/admission.py)."""
    overload_window_s: float = Field(default=default(_A, "overload_window_s"), gt=0)
    """The window over which the arrival rate is measured."""
    queue_delay_target_s: float = Field(default=default(_A, "queue_delay_target_s"), gt=0)
    """While overloaded, new work is admitted only if what is ahead of it drains within this."""
    queue_delay_deadline_share: float = Field(default=default(_A, "queue_delay_deadline_share"), ge=0, le=1)
    """While overloaded, a request may still wait this share of its own deadline when that is longer than
    the target (no deadline: only the queue bounds apply)."""
    tenant_requests_per_s: float | None = Field(default=None, gt=0)
    """Default rate per tenant (call metadata x-tenant-id) in requests/s; unset: unlimited."""
    tenant_tokens_per_s: float | None = Field(default=None, gt=0)
    """Default rate per tenant in tokens/s (tokens sent to models); unset: unlimited."""
    tenant_burst_s: float = Field(default=default(TenantLimits, "burst_s"), gt=0)
    """How long a tenant may burst above its rates (bucket capacity = rate x this)."""
    tenants: dict[str, TenantLimitSettings] = Field(default_factory=dict)
    """Rates of named tenants, overriding the defaults: in TOML `[tenants.search] requests_per_s = 50`,
    or MODELROUTER_TENANTS='{"search": {"requests_per_s": 50}}'."""

    # Many routers over one fleet (docs/operations.md, Many routers).
    redis_url: str | None = None
    """A Redis every router of the fleet shares (`redis://host:6379/0`, `rediss://` for TLS): tenant rates
    are counted there, so they hold for the fleet, not per router. Unset: each router counts its own."""
    redis_timeout_s: float = Field(default=0.05, gt=0)
    """How long a call waits on Redis before this router counts on its own (its share of each rate)
    until Redis answers again; no call fails because Redis is down or slow."""
    redis_prefix: str = "modelrouter"
    """Prefix of every key the router writes (several fleets may share one Redis)."""
    cache_in_redis: bool = False
    """With `redis_url` and `cache_max_bytes`: the output cache gets a second level in Redis, shared by
    every router (a sequence one computed answers at all of them)."""
    cache_ttl_s: float = Field(default=3600.0, gt=0)
    """How long a row stays in the shared cache (its size is Redis's maxmemory, allkeys-lru)."""
    routers_expected: int = Field(default=1, gt=0)
    """Router processes assumed in the fleet until Redis has been reached once (afterwards the count the
    routers announce there): each router's share of a tenant's rate while Redis does not answer."""

    # What one request may ask.
    max_inputs_per_request: int = Field(default=default(_R, "max_inputs"), gt=0)
    """Inputs (Embed) or documents (Rerank) in one request."""
    max_tokens_per_request: int = Field(default=default(_R, "max_tokens"), gt=0)
    """Tokens in one request, counted before truncation."""
    max_characters_per_request: int = Field(default=default(_R, "max_characters"), gt=0)
    """Characters of text in one request (inputs, query and documents, or prompt and messages), checked
    before tokenizing: a bigger request is refused for the cost of receiving it."""
    tokenizing_threads: int = Field(default=default(_R, "tokenizing_threads"), gt=0)
    """Parts of big requests (256 texts each) tokenized at once in worker threads; the rest wait their turn,
    so a flood of huge requests cannot take every core from the event loop. Default: the CPUs the process
    may use, at least 2."""
    inline_tokenize_characters: int = Field(default=default(_R, "inline_tokenize_characters"), ge=0)
    """Requests with at most this many characters are tokenized on the event loop (a thread hop costs more
    than it saves on them); bigger ones in `tokenizing_threads` worker threads, in parallel with the loop.
    Raising it saves CPU per text where cores are scarce, at the cost of throughput (router/core/config.py
    has the measurements). 0 sends every request to the threads."""
    max_tokenizing_characters: int = Field(default=default(_R, "max_tokenizing_characters"), gt=0)
    """Characters of big requests being tokenized or waiting to be; past it a new big request gets
    RESOURCE_EXHAUSTED QUEUE_FULL with a retry delay (one request alone always gets in)."""
    max_concurrent_rpcs: int = Field(default=1024, gt=0)
    """Calls inside the router at once (every method); one more gets RESOURCE_EXHAUSTED TOO_MANY_REQUESTS
    with a retry delay before its request is looked at."""
    chunk_overlap_tokens: int = Field(default=default(_R, "chunk_overlap"), ge=0)
    """Tokens shared by consecutive windows when an input is chunked (capped at half a window)."""

    # What the router says.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """On SIGTERM or Ctrl-C: stop admitting (health NOT_SERVING, new calls UNAVAILABLE with a retry
    delay), give the requests in flight this long to finish, then stop the server and Triton."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve Prometheus metrics on host:metrics_port (unset: no metrics endpoint)."""
    event_loop: EventLoop = "auto"
    """`auto`: uvloop where it is installed (less CPU per call; router/event_loop.py), else asyncio's loop."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "console", "json"] = "auto"
    """`auto`: JSON lines when standard output is not a terminal (a container, a file), else for people."""

    @field_validator("event_loop")
    @classmethod
    def _loop_installed(cls, choice: str) -> str:
        try:
            loop_factory(choice)
        except ImportError:
            raise ValueError("uvloop is not installed (`auto` falls back to asyncio's loop)") from None
        return choice

    @model_validator(mode="after")
    def _tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if (self.triton_tls_cert_file is None) != (self.triton_tls_key_file is None):
            raise ValueError("triton_tls_cert_file and triton_tls_key_file go together")
        if self.triton_tls_ca_file is not None and not self.triton:
            raise ValueError("TLS to Triton (triton_tls_ca_file) is for the servers named in `triton`")
        if self.triton_tls_cert_file is not None and self.triton_tls_ca_file is None:
            raise ValueError("a client certificate for Triton (triton_tls_cert_file) needs triton_tls_ca_file")
        files = (self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file)
        files += (self.triton_tls_ca_file, self.triton_tls_cert_file, self.triton_tls_key_file)
        for path in files:
            if path is not None and not path.is_file():
                raise ValueError(f"{path} is not a readable file")
        if self.cache_in_redis and not (self.redis_url and self.cache_max_bytes):
            raise ValueError("cache_in_redis needs redis_url and cache_max_bytes (the router's own level)")
        by_certificate = [name for name, p in self.principals.items() if p.certificate_name]
        if by_certificate and self.tls_client_ca_file is None:
            raise ValueError(f"principals {by_certificate} name a certificate, which needs tls_client_ca_file")
        return self

    @field_validator("triton")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        for target in targets:
            Target.parse(target)  # raises ValueError naming the bad one
        return targets

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)
