"""The server span of a call to the router's service: it continues the caller's W3C `traceparent`, is
current while the call runs (so every span and log line of the call belongs to it), and records the
call's status code as OpenTelemetry's gRPC conventions say. The router makes it in the wrapper it has
anyway: OpenTelemetry's gRPC interceptor wraps the handler and proxies the context anew for every call."""

from __future__ import annotations

import contextlib

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from router.observability import tracing

SERVICE_NAME = "modelrouter.v1.ModelRouterService"
_CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
_SERVER_FAULTS = {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}


class ServerSpan:
    """A server span made current while the call runs, ended when it leaves (what the SDK's
    `start_as_current_span` does, for a little less per call: every call sampled or not pays it)."""

    __slots__ = ("_parent", "_span", "_token")

    def __init__(self, method: str, metadata: dict) -> None:
        self._parent = propagate.extract(metadata)
        self._span = tracing.tracer.start_span(
            f"/{SERVICE_NAME}/{method}",
            context=self._parent,
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method},
            record_exception=False,
        )

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span, self._parent))
        return self._span

    def __exit__(self, *exc_info) -> None:
        otel_context.detach(self._token)
        self._span.end()


def server_span(traced: bool, method: str, metadata: dict) -> contextlib.AbstractContextManager:
    """The call's server span, or nothing when tracing is off."""
    return ServerSpan(method, metadata) if traced else contextlib.nullcontext()


def record_status(code: str) -> None:
    """Put the call's status code on the current server span; a server's fault marks it an error."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
        if code in _SERVER_FAULTS:
            span.set_status(trace.Status(trace.StatusCode.ERROR, code))
