"""One trace from the caller through the router into Triton: a real OTLP receiver on loopback, `router serve`
configured only by OTEL_* variables, its embedded Triton in OpenTelemetry mode."""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from adapters.triton.embedded import free_port
from bench.harness import router_serve
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from tests.helpers import EMBED_MODEL, GENERATE_MODEL, RERANK_MODEL, wait_for


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP traces receiver: protobuf (the router's exporter) and JSON (Triton's)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.spans: list[dict] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, service: str, span: dict) -> None:
        with self.lock:
            self.spans.append({**span, "service": service})

    def of_trace(self, trace_id: str) -> list[dict]:
        with self.lock:
            return [span for span in self.spans if span["trace_id"] == trace_id]


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1, as OTLP exporters expect: kept-alive connections and `Expect: 100-continue` (which curl, under
    # Triton's exporter, sends with larger bodies) are answered properly.
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        try:
            self._receive()
        except Exception as error:  # kept for the test's message: a lost export would explain a missing span
            self.server.errors.append(f"{type(error).__name__}: {error} (headers: {dict(self.headers)})")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def _receive(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if "json" in (self.headers.get("Content-Type") or ""):
            _from_json(self.server, json.loads(body))
        else:
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                attributes = resource.resource.attributes
                service = next((a.value.string_value for a in attributes if a.key == "service.name"), "")
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.server.add(
                            service,
                            {
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "name": span.name,
                                "links": [link.span_id.hex() for link in span.links],
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                                "start_ns": span.start_time_unix_nano,
                                "end_ns": span.end_time_unix_nano,
                            },
                        )

    def log_message(self, *args) -> None:
        pass


def _value(value) -> object:
    """An OTLP AnyValue's scalar (the kind that is set)."""
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def _from_json(server: Receiver, payload: dict) -> None:
    """OTLP/JSON: ids are hex strings."""
    for resource in payload.get("resourceSpans", []):
        attributes = resource.get("resource", {}).get("attributes", [])
        service = next((a["value"].get("stringValue", "") for a in attributes if a["key"] == "service.name"), "")
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                server.add(
                    service,
                    {
                        "trace_id": span.get("traceId", "").lower(),
                        "span_id": span.get("spanId", "").lower(),
                        "parent": span.get("parentSpanId", "").lower(),
                        "name": span.get("name", ""),
                        "links": [link.get("spanId", "").lower() for link in span.get("links", [])],
                        "attributes": {a.get("key", ""): a.get("value") for a in span.get("attributes", [])},
                        "start_ns": int(span.get("startTimeUnixNano", 0)),
                        "end_ns": int(span.get("endTimeUnixNano", 0)),
                    },
                )


@pytest.fixture(scope="module")
def traced_router(tmp_path_factory):
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    log = tmp_path_factory.mktemp("traced") / "triton.log"
    http_port = free_port()
    arguments = ["--http-port", str(http_port)]
    try:
        with (
            router_serve(arguments, otel, triton_log=str(log)) as (target, _),
            grpc.insecure_channel(target) as channel,
        ):
            stub = pb_grpc.ModelRouterServiceStub(channel)
            wait_for(
                lambda: GENERATE_MODEL in {m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models},
                "the traced router to serve the generation model",
            )
            stub.http = f"http://127.0.0.1:{http_port}"
            yield receiver, stub, health_pb2_grpc.HealthStub(channel)
    finally:
        receiver.shutdown()


def caller_context() -> tuple[str, str, list[tuple[str, str]]]:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent, [("traceparent", f"00-{trace_id}-{parent}-01")]


CALLS = {
    "Embed": lambda stub, metadata: stub.Embed(
        pb.EmbedRequest(model=EMBED_MODEL, inputs=["a traced text", "another one"]), metadata=metadata, timeout=30
    ),
    "Rerank": lambda stub, metadata: stub.Rerank(
        pb.RerankRequest(model=RERANK_MODEL, query="fox", documents=["the quick brown fox", "a recipe"]),
        metadata=metadata,
        timeout=30,
    ),
    "Generate": lambda stub, metadata: list(
        stub.Generate(
            pb.GenerateRequest(model=GENERATE_MODEL, prompt="Hello", max_tokens=4), metadata=metadata, timeout=60
        )
    ),
}


@pytest.mark.parametrize("method", list(CALLS))
def test_one_trace_runs_from_the_caller_through_the_router_into_triton(traced_router, method):
    receiver, stub, _ = traced_router
    call_span = "triton.stream" if method == "Generate" else "triton.infer"
    incomplete = []
    # Triton (2.51) now and then exports none or only part of one request's spans (4 of about 100 traced
    # calls here, never with a receiver error): a new call with a new trace id then, three at most. The
    # router's own spans are checked on every attempt.
    for _ in range(3):
        trace_id, parent, metadata = caller_context()
        CALLS[method](stub, metadata)

        def router_side(trace_id: str = trace_id) -> bool:
            return call_span in {span["name"] for span in receiver.of_trace(trace_id)}

        def triton_side(trace_id: str = trace_id) -> bool:
            spans = receiver.of_trace(trace_id)
            calls = {span["span_id"] for span in spans if span["name"] == call_span}
            return any(span["service"] == "triton" and span["parent"] in calls for span in spans)

        wait_for(router_side, f"the router's spans of one {method} call", timeout_s=30)
        spans = receiver.of_trace(trace_id)
        [server] = [span for span in spans if span["name"].endswith(f"ModelRouterService/{method}")]
        assert server["parent"] == parent and server["service"] == "model-router"  # the caller's span is its parent
        [call] = [span for span in spans if span["name"] == call_span]
        assert call["parent"] == server["span_id"]  # a batch's call: the request anchored it, alone here
        if method != "Generate":
            assert server["span_id"] in call["links"]
            noted = {"modelrouter.tokens", "modelrouter.tokenize_ms", "modelrouter.queue_ms"}
            assert noted <= set(server["attributes"])
        # Two spans of the router's per call, and the Triton call's: nothing in between.
        assert {span["name"] for span in spans if span["service"] == "model-router"} == {server["name"], call_span}
        try:
            wait_for(triton_side, f"Triton's spans of one {method} call", timeout_s=20)
            return  # Triton's spans hang under the router's call span, in the caller's trace
        except AssertionError:
            seen = [(span["service"], span["name"], span["parent"]) for span in receiver.of_trace(trace_id)]
            incomplete.append(seen)
    raise AssertionError(f"no Triton span under the router's call span in 3 calls: {incomplete}; {receiver.errors}")


def test_health_checks_are_not_traced(traced_router):
    receiver, _, health = traced_router
    for _ in range(3):
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    _, _, metadata = caller_context()
    CALLS["Embed"](traced_router[1], metadata)  # a traced call after them, to know the exporter flushed
    wait_for(lambda: any(s["name"].endswith("/Embed") for s in receiver.spans), "a flush", timeout_s=30)
    assert not [span for span in receiver.spans if "grpc.health" in span["name"] or "Health" in span["name"]]


def test_an_http_call_continues_the_callers_trace_into_triton(traced_router):
    receiver, stub, _ = traced_router
    trace_id, parent, metadata = caller_context()
    reply = httpx.post(
        f"{stub.http}/v1/embeddings", json={"model": EMBED_MODEL, "input": "a traced text"}, headers=dict(metadata)
    )
    assert reply.status_code == 200
    wait_for(lambda: "triton.infer" in {s["name"] for s in receiver.of_trace(trace_id)}, "the HTTP call's spans", 30)
    spans = receiver.of_trace(trace_id)
    [server] = [span for span in spans if span["name"] == "POST /v1/embeddings"]
    assert server["parent"] == parent and server["service"] == "model-router"
    [call] = [span for span in spans if span["name"] == "triton.infer"]
    assert call["parent"] == server["span_id"]
    assert server["attributes"]["http.response.status_code"] == 200
