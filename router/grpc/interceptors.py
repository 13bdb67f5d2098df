"""The one interceptor chain: tracing (outermost, when OpenTelemetry is configured), error mapping, log
context (innermost).

Error mapping sits inside tracing so spans record the real status code; log context sits innermost so
every log line a handler writes carries the request's id, method, model, tenant and trace id. Only the
router's own service is wrapped; health and reflection pass through untouched.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Callable

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from router import telemetry
from router.core.errors import RouterError
from router.grpc.converters import TENANT_KEY
from router.grpc.status import internal_status, to_status

log = structlog.get_logger("router.rpc")

SERVICE_PREFIX = "/modelrouter.v1.ModelRouterService/"
REQUEST_ID_KEY = "x-request-id"


class _MethodInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the behaviour of the router's unary and server-streaming methods."""

    def wrap_unary(self, behavior: Callable, method: str) -> Callable:
        raise NotImplementedError

    def wrap_stream(self, behavior: Callable, method: str) -> Callable:
        raise NotImplementedError

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler
        name = method[len(SERVICE_PREFIX) :]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.wrap_unary(handler.unary_unary, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self.wrap_stream(handler.unary_stream, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class ErrorInterceptor(_MethodInterceptor):
    """RouterError -> its status with google.rpc details; anything else -> INTERNAL, fixed message."""

    async def _abort(self, context, error: Exception) -> None:
        if isinstance(error, RouterError):
            status = to_status(error)
            log.info("rpc.rejected", reason=error.reason, code=status.code.name, error=error.message)
        else:
            log.exception("rpc.internal_error", exc_info=error)
            status = internal_status()
        await context.abort(status.code, status.details, status.trailing_metadata)

    def wrap_unary(self, behavior, method):
        async def unary(request, context):
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # noqa: BLE001 - the one place that maps every error
                await self._abort(context, error)

        return unary

    def wrap_stream(self, behavior, method):
        async def stream(request, context):
            try:
                async for response in behavior(request, context):
                    yield response
            except grpc.aio.AbortError:
                raise
            except Exception as error:  # noqa: BLE001
                await self._abort(context, error)

        return stream


class LogContextInterceptor(_MethodInterceptor):
    """Binds request id, method, tenant and trace id to structlog's context for the call's duration."""

    def _bind(self, context, method: str) -> float:
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        span = trace.get_current_span().get_span_context()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id,
            method=method,
            tenant=metadata.get(TENANT_KEY, ""),
            **({"trace_id": format(span.trace_id, "032x")} if span.is_valid else {}),
        )
        return time.perf_counter()

    def _done(self, started: float, outcome: str) -> None:
        log.debug("rpc.done", outcome=outcome, ms=round((time.perf_counter() - started) * 1000, 2))

    def wrap_unary(self, behavior, method):
        async def unary(request, context):
            started = self._bind(context, method)
            try:
                response = await behavior(request, context)
            except BaseException:
                self._done(started, "error")
                raise
            self._done(started, "ok")
            return response

        return unary

    def wrap_stream(self, behavior, method):
        async def stream(request, context):
            started = self._bind(context, method)
            outcome = "error"
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):  # a servicer that writes with context.write()
                    await result
                else:
                    async for response in result:
                        yield response
                outcome = "ok"
            finally:
                self._done(started, outcome)

        return stream


def interceptor_chain() -> list[grpc.aio.ServerInterceptor]:
    """Outermost first, as grpc.aio applies them."""
    # With no exporter configured no span could leave the process, so the tracing interceptor is left out
    # (it costs about a tenth of a millisecond per call on this machine kind). Health and reflection are
    # not traced.
    traced = filters.service_prefix(SERVICE_PREFIX.strip("/").split("/")[0])
    tracing = [aio_server_interceptor(filter_=traced)] if telemetry.tracing_configured() else []
    return [*tracing, ErrorInterceptor(), LogContextInterceptor()]
