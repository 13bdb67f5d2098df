"""Tracing: configured only by OTEL_* variables; a batch span is its anchor request's child, linked to all."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router import telemetry
from router.core import tracing


@pytest.fixture
def otel_env(monkeypatch):
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_tracing_is_off_unless_an_endpoint_is_set(otel_env):
    assert not telemetry.tracing_configured() and telemetry.triton_trace_url() is None
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    assert telemetry.tracing_configured() and telemetry.protocol() == "http/protobuf"
    assert telemetry.triton_trace_url() == "http://collector:4318/v1/traces"
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert telemetry.triton_trace_url() is None  # Triton speaks OTLP over HTTP only: triton_trace_url then
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="http/protobuf or grpc"):
        telemetry.protocol()
    otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not telemetry.tracing_configured()


def test_a_batch_span_is_its_anchors_child_and_links_every_request(monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    monkeypatch.setattr(tracing, "tracer", tracer)
    with tracer.start_as_current_span("request a"):
        a = tracing.current()
    with tracer.start_as_current_span("request b"):
        b = tracing.current()
    with tracing.batch_span("m", "1", [a, a, None, b], rows=4, real=40, padded=48) as span:
        assert trace.get_current_span() is span
    [batch] = [s for s in exporter.get_finished_spans() if s.name == "modelrouter.batch"]
    assert batch.parent.span_id == a.span_id and batch.context.trace_id == a.trace_id
    assert {link.context.span_id: link.attributes["modelrouter.sequences"] for link in batch.links} == {
        a.span_id: 2,
        b.span_id: 1,
    }
    assert batch.attributes["modelrouter.requests"] == 2 and batch.attributes["modelrouter.padded_tokens"] == 48


def test_nothing_is_recorded_for_untraced_requests():
    assert tracing.current() is None
    with tracing.batch_span("m", "1", [None, None], rows=2, real=2, padded=2) as span:
        assert not span.get_span_context().is_valid
    with tracing.child("x") as span:
        assert not span.get_span_context().is_valid


def test_an_unsampled_request_makes_no_span():
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    unsampled = SpanContext(trace_id=1, span_id=2, is_remote=True, trace_flags=TraceFlags(0))
    with trace.use_span(NonRecordingSpan(unsampled)):
        assert tracing.current() is None
    sampled = SpanContext(trace_id=1, span_id=2, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    with trace.use_span(NonRecordingSpan(sampled)):
        assert tracing.current() == sampled
