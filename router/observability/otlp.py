"""The OTLP protocol and exporter the environment asks for: read by the router (to refuse a protocol it
cannot speak before starting) and by its span-exporting child (span_export.py), which builds the exporter."""

from __future__ import annotations

import os

HTTP, GRPC = "http/protobuf", "grpc"


def protocol() -> str:
    value = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    value = (value or HTTP).strip().lower()
    if value not in (HTTP, GRPC):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={value!r}: the router exports with {HTTP} or {GRPC}")
    return value


def otlp_exporter():
    """The SDK's OTLP span exporter for the configured protocol (it reads its own OTEL_EXPORTER_OTLP_*)."""
    if protocol() == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()
