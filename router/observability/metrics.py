"""Prometheus metrics, served on `metrics_port` (router/settings.py). Names start with modelrouter_."""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

CACHE_HITS = Counter("modelrouter_cache_hits_total", "Sequences answered from the output cache.", ["model"])
CACHE_MISSES = Counter("modelrouter_cache_misses_total", "Sequences looked up and not found in the cache.", ["model"])
CACHE_SHARED_HITS = Counter(
    "modelrouter_cache_shared_hits_total",
    "Sequences this router's cache missed and the fleet's (Redis) held.",
    ["model"],
)
CACHE_EVICTIONS = Counter("modelrouter_cache_evictions_total", "Outputs evicted to stay within the byte bound.")
CACHE_BYTES = Gauge("modelrouter_cache_bytes", "Bytes of model outputs held in the cache.")

BATCHES = Counter("modelrouter_batches_total", "Batches sent to the backend.", ["model"])
BATCH_ROWS = Histogram(
    "modelrouter_batch_rows", "Sequences per batch.", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
REAL_TOKENS = Counter("modelrouter_real_tokens_total", "Tokens computed, without padding.", ["model"])
PADDED_TOKENS = Counter("modelrouter_padded_tokens_total", "Tokens computed, padding included.", ["model"])
SHED = Counter("modelrouter_shed_total", "Requests refused or dropped before reaching the model.", ["model", "reason"])
QUEUED_TOKENS = Gauge("modelrouter_queued_tokens", "Tokens waiting in the model's scheduler.", ["model"])
MODEL_USABLE = Gauge(
    "modelrouter_model_usable",
    "1 for each model the backend has that the router serves, 0 for one whose contract or tokenizer is broken.",
    ["model"],
)

SPANS_DROPPED = Counter(
    "modelrouter_spans_dropped_total",
    "Sampled spans dropped before export, by reason: queue_full (the hand-off to the exporting process fell "
    "behind), exporter_gone (that process died).",
    ["reason"],
)

SHARD_BATCHES = Counter(
    "modelrouter_shard_batches_total",
    "Batches sent to each model server (shard) by outcome: ok, failed (the shard's fault: ejected), "
    "error (the batch's own failure), retried (sent again elsewhere).",
    ["shard", "outcome"],
)
SHARD_READY = Gauge(
    "modelrouter_shard_ready", "1 while a model server answers discovery and says it is ready, else 0.", ["shard"]
)
SHARD_OUTSTANDING_TOKENS = Gauge(
    "modelrouter_shard_outstanding_tokens", "Tokens of batches in flight at each model server.", ["shard"]
)

# Per request (the transport's interceptor records them as each call ends). `model` is the requested model
# when the router serves it, else "(unknown)": a caller cannot grow the label set with made-up names.
REQUESTS = Counter(
    "modelrouter_requests_total", "Requests by method, model and status code.", ["method", "model", "code"]
)
REQUEST_SECONDS = Histogram(
    "modelrouter_request_duration_seconds",
    "Time from a request's arrival to its last response, by method and model (every status).",
    ["method", "model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REQUEST_TOKENS = Counter(
    "modelrouter_request_tokens_total",
    "Tokens of successful requests: computed tokens (Embed, Rerank), prompt + completion (Generate).",
    ["method", "model"],
)
INFLIGHT_BATCHES = Gauge("modelrouter_inflight_batches", "Batches at the model servers now.", ["model"])
RUNNING_STREAMS = Gauge("modelrouter_running_streams", "Generation streams running now.", ["model"])
WAITING_STREAMS = Gauge("modelrouter_waiting_streams", "Generation streams waiting for a place.", ["model"])
TRITON_CALL_SECONDS = Histogram(
    "modelrouter_triton_call_duration_seconds",
    "Duration of each call to a model server (one batch, or one generation stream), by shard and outcome.",
    ["shard", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# What an autoscaler reads to add model servers before the router sheds (deploy/kubernetes/autoscaling.yaml).
DRAIN_TOKENS = Gauge(
    "modelrouter_drain_tokens_per_second",
    "Tokens per second the model's servers complete for this router while busy (admission's drain rate).",
    ["model"],
)
BACKLOG_SECONDS = Gauge(
    "modelrouter_backlog_seconds",
    "Seconds the model's servers need for the work this router has queued and in flight, at the drain rate.",
    ["model"],
)
BATCH_SLOTS = Gauge(
    "modelrouter_batch_slots",
    "Batches this router may have in flight to the model's servers at once (max_inflight_batches x shards):"
    " modelrouter_inflight_batches over it is how busy it keeps them.",
    ["model"],
)
ASYNCIO_TASKS = Gauge("modelrouter_asyncio_tasks", "asyncio tasks alive in the router's event loop (a leak grows it).")
UNKNOWN_MODEL = "(unknown)"


@functools.lru_cache(maxsize=1024)
def _request_series(method: str, model: str, code: str) -> tuple:
    """A request's metric series (a label lookup costs more than the update; the labels are bounded:
    methods, served models or "(unknown)", codes)."""
    return (
        REQUESTS.labels(method, model, code),
        REQUEST_SECONDS.labels(method, model),
        REQUEST_TOKENS.labels(method, model),
    )


def count_request(method: str, model: str, code: str, elapsed_s: float, tokens: int | None = None) -> None:
    """One finished call of either edge: its count by status code, its duration, and the tokens of a
    successful one (None: none to count)."""
    requests, seconds, counted = _request_series(method, model, code)
    requests.inc()
    seconds.observe(elapsed_s)
    if tokens is not None:
        counted.inc(tokens)


SHARED_STORE_UP = Gauge(
    "modelrouter_shared_store_up",
    "1 while the store routers share (redis_url) answers; 0 while this router counts and caches on its own.",
)
SHARED_STORE_ROUTERS = Gauge(
    "modelrouter_shared_store_routers", "Router processes last seen alive through the shared store."
)
TENANT_LIMITS_LOCAL = Counter(
    "modelrouter_tenant_limits_local_total",
    "Requests whose tenant rates were counted in this router (its share) because the shared store did not answer.",
)
