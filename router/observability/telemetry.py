"""Tracing, configured only by the standard OpenTelemetry variables; off when none of them is set.

- `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): where spans go, over OTLP.
- `OTEL_EXPORTER_OTLP_PROTOCOL` (or `..._TRACES_PROTOCOL`): `http/protobuf` (the default, as the
  specification says) or `grpc`.
- `OTEL_SERVICE_NAME` (default `model-router`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
  `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`: read by the SDK itself.
- `OTEL_TRACES_EXPORTER=none` turns tracing off.

Spans are recorded in the router and encoded and sent by a child process (router/observability/span_export.py).

The embedded Triton exports its own spans to the same collector: Triton speaks only OTLP over HTTP, so
with the `grpc` protocol the collector's HTTP address goes in the router's `triton_trace_url` setting.
"""

from __future__ import annotations

import os

from opentelemetry import trace

from router.observability.otlp import HTTP, protocol

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracing_configured() -> bool:
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(os.environ.get(name) for name in _ENDPOINTS)


def configure_tracing():
    """Install a tracer provider exporting over OTLP, if the environment asks for one; return it (None: off).
    Spans are recorded here and exported by a child process (router/observability/span_export.py)."""
    if not tracing_configured():
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    from router.observability.span_export import HandOff

    protocol()  # a protocol the router cannot speak is refused here, not in the child
    defaults = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "model-router"}
    resource = Resource.create(defaults)
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    provider.add_span_processor(HandOff(resource))
    trace.set_tracer_provider(provider)
    return provider


def triton_trace_url() -> str | None:
    """The OTLP/HTTP traces URL for an embedded Triton: the router's own endpoint when it speaks HTTP."""
    if not tracing_configured() or protocol() != HTTP:
        return None
    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    return os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
