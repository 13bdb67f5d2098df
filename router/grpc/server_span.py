"""The server span of a call to the router's service (tracing.ServerSpan: it continues the caller's W3C
`traceparent`), named and marked as OpenTelemetry's gRPC conventions say, with the call's status code.
The router makes it in the wrapper it has anyway: OpenTelemetry's gRPC interceptor wraps the handler and
proxies the context anew for every call."""

from __future__ import annotations

import contextlib

import grpc
from opentelemetry import trace

from router.observability import tracing

SERVICE_NAME = "modelrouter.v1.ModelRouterService"
_CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
_SERVER_FAULTS = {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}


def server_span(traced: bool, method: str, metadata: dict) -> contextlib.AbstractContextManager:
    """The call's server span, or nothing when tracing is off."""
    if not traced:
        return contextlib.nullcontext()
    attributes = {"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method}
    return tracing.ServerSpan(f"/{SERVICE_NAME}/{method}", metadata, attributes)


def record_status(code: str) -> None:
    """Put the call's status code on the current server span; a server's fault marks it an error."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(code, 2))
        if code in _SERVER_FAULTS:
            span.set_status(trace.Status(trace.StatusCode.ERROR, code))
