"""The one interceptor chain: tracing (outermost, when OpenTelemetry is configured), error mapping, log
context (innermost).

Error mapping sits inside tracing so spans record the real status code; log context sits innermost so
every log line a handler writes carries the request's id, method, model, tenant and trace id. Only the
router's own service is wrapped; health and reflection pass through untouched.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Callable

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

from router import metrics, telemetry
from router.core import errors
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
            status = to_status(error)  # logged once, in the request's line (LogContextInterceptor)
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


# Reasons that say the requested model is not one the router serves: its name is not a metric label.
_UNKNOWN_MODEL_REASONS = {errors.MODEL_NOT_FOUND, errors.BACKEND_INDEX_UNAVAILABLE, errors.MODEL_NOT_READY}


class LogContextInterceptor(_MethodInterceptor):
    """Binds request id, method, tenant, trace and span ids to structlog's context for the call's duration,
    and writes one line per request when it ends (`rpc`): model, code, reason, latency, tokens, batches.
    The request's text is never logged."""

    def _bind(self, context, method: str) -> float:
        metadata = dict(context.invocation_metadata() or ())
        request_id = metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        span = trace.get_current_span().get_span_context()
        ids = (
            {"trace_id": format(span.trace_id, "032x"), "span_id": format(span.span_id, "016x")}
            if span.is_valid
            else {}
        )
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=method, tenant=metadata.get(TENANT_KEY, ""), **ids
        )
        return time.perf_counter()

    def _done(self, started: float, method: str, request, response, error: BaseException | None) -> None:
        fields: dict = {"model": getattr(request, "model", ""), "code": "OK"}
        if isinstance(error, RouterError):
            fields.update(code=to_status(error).code.name, reason=error.reason, error=error.message)
        elif isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # the caller went away
            fields["code"] = "CANCELLED"
        elif isinstance(error, grpc.aio.AbortError):
            fields["code"] = "ABORTED_BY_HANDLER"
        elif error is not None:
            fields["code"] = "INTERNAL"  # its traceback is logged once, by the error interceptor
        usage = getattr(response, "usage", None)
        if usage is not None and response.HasField("usage"):
            if hasattr(usage, "prompt_tokens"):
                fields.update(tokens=usage.prompt_tokens + usage.completion_tokens)
            else:
                fields.update(tokens=usage.computed_tokens, batches=usage.batches)
        elapsed = time.perf_counter() - started
        fields["ms"] = round(elapsed * 1000, 2)
        log.info("rpc", **fields)
        known = fields.get("reason") not in _UNKNOWN_MODEL_REASONS and len(fields["model"]) <= 128
        model = fields["model"] if known else metrics.UNKNOWN_MODEL
        metrics.REQUESTS.labels(method, model, fields["code"]).inc()
        metrics.REQUEST_SECONDS.labels(method, model).observe(elapsed)
        if fields["code"] == "OK" and "tokens" in fields:
            metrics.REQUEST_TOKENS.labels(method, model).inc(fields["tokens"])

    def wrap_unary(self, behavior, method):
        async def unary(request, context):
            started = self._bind(context, method)
            try:
                response = await behavior(request, context)
            except BaseException as error:
                self._done(started, method, request, None, error)
                raise
            self._done(started, method, request, response, None)
            return response

        return unary

    def wrap_stream(self, behavior, method):
        async def stream(request, context):
            started = self._bind(context, method)
            last, failure = None, None
            try:
                result = behavior(request, context)
                if inspect.isawaitable(result):  # a servicer that writes with context.write()
                    await result
                else:
                    async for response in result:
                        last = response
                        yield response
            except BaseException as error:
                failure = error
                raise
            finally:
                self._done(started, method, request, last, failure)

        return stream


def interceptor_chain() -> list[grpc.aio.ServerInterceptor]:
    """Outermost first, as grpc.aio applies them."""
    # With no exporter configured no span could leave the process, so the tracing interceptor is left out
    # (it costs about a tenth of a millisecond per call on this machine kind). Health and reflection are
    # not traced.
    traced = filters.service_prefix(SERVICE_PREFIX.strip("/").split("/")[0])
    tracing = [aio_server_interceptor(filter_=traced)] if telemetry.tracing_configured() else []
    return [*tracing, ErrorInterceptor(), LogContextInterceptor()]
