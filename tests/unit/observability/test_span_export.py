"""Spans exported from a child process (router/observability/span_export.py): what reaches an OTLP receiver
is what the SDK recorded in the router, field by field; a dead exporter never breaks the process that records spans."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags, TraceState
from prometheus_client import REGISTRY

from router.observability.span_export import HandOff


class _Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def spans(self) -> dict[str, tuple]:
        """name -> (resource attributes, scope, span) for every span received."""
        found = {}
        for request in self.requests:
            for resource in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        found[span.name] = (attributes, scope.scope, span)
        return found


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch):
    server = _Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    yield server
    server.shutdown()


def _any(value):
    """An OTLP AnyValue as a Python value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_any(v) for v in value.array_value.values)
    return getattr(value, kind)


def _attributes(pairs) -> dict:
    return {pair.key: _any(pair.value) for pair in pairs}


def test_what_the_receiver_gets_is_what_was_recorded(receiver):
    resource = Resource.create({"service.name": "span-export-test"})
    provider = TracerProvider(resource=resource)
    recorded = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    provider.add_span_processor(HandOff(resource))
    tracer = provider.get_tracer("modelrouter.test", "1.2")
    caller = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("k", "v")]))
    with tracer.start_as_current_span(
        "server",
        context=trace.set_span_in_context(NonRecordingSpan(caller)),
        kind=trace.SpanKind.SERVER,
        attributes={"rpc.method": "Embed", "sizes": (1, 2, 3), "ratio": 0.5, "ok": True},
    ) as server:
        server.add_event("admitted", {"queued_tokens": 12})
        with tracer.start_as_current_span(
            "triton.infer",
            kind=trace.SpanKind.CLIENT,
            links=[Link(server.get_span_context(), {"modelrouter.sequences": 3})],
        ) as call:
            call.set_status(trace.Status(trace.StatusCode.ERROR, "UNAVAILABLE"))
    provider.shutdown()  # hands the rest off; the child exports them and exits

    spans = receiver.spans()
    assert set(spans) == {"server", "triton.infer"}
    for expected in recorded.get_finished_spans():
        resource_attributes, scope, span = spans[expected.name]
        assert resource_attributes["service.name"] == "span-export-test"
        assert (scope.name, scope.version) == ("modelrouter.test", "1.2")
        assert int.from_bytes(span.trace_id, "big") == expected.context.trace_id == 0xABC
        assert int.from_bytes(span.span_id, "big") == expected.context.span_id
        assert int.from_bytes(span.parent_span_id, "big") == expected.parent.span_id
        assert span.trace_state == expected.context.trace_state.to_header() == "k=v"
        assert span.kind == expected.kind.value + 1  # OTLP counts from SPAN_KIND_UNSPECIFIED
        assert (span.start_time_unix_nano, span.end_time_unix_nano) == (expected.start_time, expected.end_time)
        assert _attributes(span.attributes) == dict(expected.attributes)
        assert [(e.name, e.time_unix_nano, _attributes(e.attributes)) for e in span.events] == [
            (e.name, e.timestamp, dict(e.attributes)) for e in expected.events
        ]
        assert [(int.from_bytes(link.span_id, "big"), _attributes(link.attributes)) for link in span.links] == [
            (link.context.span_id, dict(link.attributes)) for link in expected.links
        ]
    assert spans["server"][2].parent_span_id == (0xDEF).to_bytes(8, "big")  # the caller's span, remote
    assert _attributes(spans["triton.infer"][2].links[0].attributes) == {"modelrouter.sequences": 3}
    assert spans["triton.infer"][2].status.code == 2 and spans["triton.infer"][2].status.message == "UNAVAILABLE"
    assert spans["server"][2].events[0].name == "admitted"


def test_a_dead_exporter_drops_spans_and_nothing_else(receiver):
    resource = Resource.create({"service.name": "span-export-test"})
    provider = TracerProvider(resource=resource)
    hand_off = HandOff(resource, interval_s=0.01)
    provider.add_span_processor(hand_off)
    tracer = provider.get_tracer("modelrouter.test")
    hand_off._process.kill()
    hand_off._process.wait()
    before = _dropped("exporter_gone")
    for _ in range(20):
        with tracer.start_as_current_span("after the exporter died"):
            time.sleep(0.002)
    assert not hand_off.force_flush()  # the hand-off failed, and said so
    provider.shutdown()  # returns; the router goes on
    assert receiver.requests == []
    assert _dropped("exporter_gone") - before == 20  # each one counted, whether pending or ended after


def test_spans_past_the_bound_are_dropped_and_counted(receiver):
    resource = Resource.create({"service.name": "span-export-test"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(HandOff(resource, interval_s=60, max_queue=5))  # no hand-off before shutdown
    tracer = provider.get_tracer("modelrouter.test")
    before = _dropped("queue_full")
    for index in range(8):
        with tracer.start_as_current_span(f"span {index}"):
            pass
    assert _dropped("queue_full") - before == 3
    provider.shutdown()
    assert set(receiver.spans()) == {f"span {index}" for index in range(5)}


def test_the_grpc_protocol_exports_through_the_child_too(monkeypatch):
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the child uses the SDK's OTLP/gRPC exporter (a receiver on loopback)."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 - the service's name
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        resource = Resource.create({"service.name": "span-export-test"})
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(HandOff(resource))
        with provider.get_tracer("modelrouter.test").start_as_current_span("over grpc") as span:
            span.set_attribute("modelrouter.rows", 3)
        provider.shutdown()
    finally:
        server.stop(None)
    spans = [s for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [(s.name, _attributes(s.attributes)) for s in spans] == [("over grpc", {"modelrouter.rows": 3})]


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("modelrouter_spans_dropped_total", {"reason": reason}) or 0.0


def test_unsampled_spans_are_not_handed_off(receiver, monkeypatch):
    resource = Resource.create({"service.name": "span-export-test"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(HandOff(resource))
    tracer = provider.get_tracer("modelrouter.test")
    unsampled = SpanContext(0x1, 0x2, is_remote=True, trace_flags=TraceFlags(0))
    with tracer.start_as_current_span("kept"):
        pass
    with tracer.start_as_current_span("not sampled", context=trace.set_span_in_context(NonRecordingSpan(unsampled))):
        pass
    provider.shutdown()
    assert set(receiver.spans()) == {"kept"}
