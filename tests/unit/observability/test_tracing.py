"""Tracing: configured only by OTEL_* variables; a Triton call is its batch's anchor request's child, linked
to all; tokenizing and queueing are attributes of the request's span."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from router.observability import otlp, telemetry, tracing


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
    assert telemetry.tracing_configured() and otlp.protocol() == "http/protobuf"
    assert telemetry.triton_trace_url() == "http://collector:4318/v1/traces"
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert telemetry.triton_trace_url() is None  # Triton speaks OTLP over HTTP only: triton_trace_url then
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match="http/protobuf or grpc"):
        otlp.protocol()
    otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not telemetry.tracing_configured()


@pytest.fixture
def recorded(monkeypatch):
    """A tracer whose spans land in memory, standing in for the router's and the adapter's."""
    from adapters.triton import calls

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    monkeypatch.setattr(tracing, "tracer", tracer)
    monkeypatch.setattr(calls, "_tracer", tracer)
    return tracer, exporter


def test_a_triton_call_is_its_batchs_anchor_requests_child_and_links_every_request(recorded):
    from adapters.triton.calls import CallSpan
    from tests.unit.core.scheduling.test_scheduler import contract

    tracer, exporter = recorded
    with tracer.start_as_current_span("request a"):
        a = tracing.current()
    with tracer.start_as_current_span("request b"):
        b = tracing.current()
    with tracing.batch([a, a, None, b], padded=48):
        call = CallSpan("triton.infer", contract(), "shard-1", 0, rows=4, tokens=40)
        call.succeeded()
        call.end()
    assert trace.get_current_span() is trace.INVALID_SPAN  # the batch's context is gone with it
    [span] = [s for s in exporter.get_finished_spans() if s.name == "triton.infer"]
    assert span.parent.span_id == a.span_id and span.context.trace_id == a.trace_id
    assert span.kind is trace.SpanKind.CLIENT
    assert {link.context.span_id: link.attributes["modelrouter.sequences"] for link in span.links} == {
        a.span_id: 2,
        b.span_id: 1,
    }
    assert span.attributes["modelrouter.requests"] == 2 and span.attributes["modelrouter.padded_tokens"] == 48
    assert span.attributes["modelrouter.rows"] == 4 and span.attributes["modelrouter.tokens"] == 40
    assert span.attributes["modelrouter.shard"] == "shard-1" and span.attributes["modelrouter.outcome"] == "ok"
    assert len(exporter.get_finished_spans()) == 3  # two requests and the call: no batch span of its own


def test_an_untraced_batch_makes_no_span(recorded):
    from adapters.triton.calls import CallSpan
    from tests.unit.core.scheduling.test_scheduler import contract

    _, exporter = recorded
    with tracing.batch([None, None], padded=10):
        call = CallSpan("triton.infer", contract(), "shard-1", 0, rows=2, tokens=10)
        assert call.span is None and call.headers is None
        call.end()
    assert not exporter.get_finished_spans()


async def test_tokenizing_and_queueing_are_attributes_of_the_requests_own_span(recorded, tmp_path):
    from router.core.config import RequestLimits
    from router.core.models.registry import ModelRegistry
    from router.core.services.embed import EmbedService
    from router.core.services.pipeline import RequestPipeline
    from router.core.services.types import EmbedRequest
    from tests.unit.fakes import IndexBackend, description, write_tokenizer

    tracer, exporter = recorded
    write_tokenizer(tmp_path / "embedder" / "tokenizer.json")
    registry = ModelRegistry(IndexBackend([description("embedder")]), tmp_path)
    await registry.refresh()
    with tracer.start_as_current_span("request"):
        await EmbedService(RequestPipeline(registry, RequestLimits())).embed(
            EmbedRequest("embedder", ["alpha beta", "gamma"])
        )
    [span] = exporter.get_finished_spans()
    assert span.attributes["modelrouter.sequences"] == 2 and span.attributes["modelrouter.tokens"] >= 2
    assert span.attributes["modelrouter.tokenize_ms"] >= 0 and span.attributes["modelrouter.queue_ms"] >= 0
