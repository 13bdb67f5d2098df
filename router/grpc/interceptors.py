"""The router's one interceptor, around every method of its service: the server span (when OpenTelemetry
is configured), the caller's place among `max_concurrent_rpcs`, who is calling (auth), the log context,
error mapping, and the request's one log line.

Its jobs share one wrapper (one coroutine frame per call, the wrapped handler made once per method). The
server span is outermost, so it records the real status code and every log line and child span of the call
belongs to it; every log line a handler writes carries the request's id, method, tenant and trace id; a
RouterError becomes its status with google.rpc details, anything else INTERNAL with a fixed message. Only
the router's own service is wrapped; health and reflection pass through untouched (and are not traced).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import structlog
from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from router.core import errors
from router.core.auth import Authenticator
from router.core.errors import RouterError
from router.grpc.converters import TENANT_KEY, set_caller
from router.grpc.retry_hints import Appointments, MeanDuration
from router.grpc.status import internal_status, to_status
from router.observability import metrics, telemetry, tracing

log = structlog.get_logger("router.rpc")

SERVICE_PREFIX = "/modelrouter.v1.ModelRouterService/"
REQUEST_ID_KEY = "x-request-id"
AUTHORIZATION_KEY = "authorization"


SERVICE_NAME = SERVICE_PREFIX.strip("/")
_ID_PREFIX = os.urandom(8).hex()
_ID_NUMBERS = itertools.count()


def new_request_id() -> str:
    """A request id for a call that brought none: this process's random 64-bit prefix and a counter (unique
    across a fleet in practice; a random id per call costs a system call)."""
    return f"{_ID_PREFIX}{next(_ID_NUMBERS):08x}"


_CODE_NUMBERS = {code.name: code.value[0] for code in grpc.StatusCode}
_SERVER_FAULTS = {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}


@dataclass(frozen=True)
class _Malformed:
    """A request whose bytes do not parse as its message type (invalid UTF-8 in a string field, a
    truncated message): handed to the wrapper, which refuses it with INVALID_ARGUMENT, where gRPC would
    answer UNKNOWN."""

    type_name: str


def _tolerant(deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    if deserialize is None:
        return None
    type_name = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    type_name = type_name.name if type_name is not None else "request"

    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except DecodeError:
            return _Malformed(type_name)

    return parse


def _model_of(request) -> str:
    """The model a request names: `model`, or GetModel's `name` (for a stream, its tally's)."""
    return getattr(request, "model", "") or getattr(request, "name", "")


@dataclass
class _StreamTally:
    """What an EmbedStream answered, for its log line: the model, and usage summed over its parts."""

    model: str
    usage: object

    def HasField(self, name: str) -> bool:  # noqa: N802 - read as a response message is
        return name == "usage"


def _tally(tally: _StreamTally | None, response) -> _StreamTally:
    part = response.response
    if tally is None:
        return _StreamTally(
            part.model, type(part.usage)(computed_tokens=part.usage.computed_tokens, batches=part.usage.batches)
        )
    tally.usage.computed_tokens += part.usage.computed_tokens
    tally.usage.batches += part.usage.batches
    return tally


@functools.lru_cache(maxsize=1024)
def _series(method: str, model: str, code: str) -> tuple:
    """A request's metric series (a label lookup costs more than the update; the labels are bounded:
    methods, served models or "(unknown)", codes)."""
    return (
        metrics.REQUESTS.labels(method, model, code),
        metrics.REQUEST_SECONDS.labels(method, model),
        metrics.REQUEST_TOKENS.labels(method, model),
    )


class _ServerSpan:
    """A server span made current while the call runs, ended when it leaves (what the SDK's
    `start_as_current_span` does, for a little less per call: every call sampled or not pays it)."""

    __slots__ = ("_parent", "_span", "_token")

    def __init__(self, name: str, parent, method: str) -> None:
        self._parent = parent
        self._span = tracing.tracer.start_span(
            name,
            context=parent,
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


class RequestInterceptor(grpc.aio.ServerInterceptor):
    """Binds request id, method, tenant, trace and span ids to structlog's context for the call's duration;
    turns errors into statuses (RouterError -> its status with google.rpc details, anything else ->
    INTERNAL with a fixed message, its traceback logged once); writes one line per request when it ends
    (`rpc`): model, code, reason, latency, tokens, batches, shards. The request's text is never logged."""

    def __init__(
        self,
        knows: Callable[[str], bool],
        auth: Authenticator | None = None,
        max_rpcs: int = 1 << 30,
        traced: bool = False,
    ) -> None:
        self._auth = auth or Authenticator()
        self._traced = traced
        self._max_rpcs = max_rpcs
        self._active = 0
        """Calls inside the router now (every method of its service)."""
        self._call_s = MeanDuration()
        self._appointments = Appointments()
        """Refused callers are told to come back one after another, at the rate calls end."""
        self._knows = knows
        """Whether a model name is one the router serves: only those become metric labels, so a caller
        cannot grow the label set."""
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        name = method[len(SERVICE_PREFIX) :]
        deserialize = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, name),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        elif handler.unary_stream is not None:
            wrapped = grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, name),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        elif handler.stream_stream is not None:
            wrapped = grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, name, streaming_requests=True),
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )
        else:
            return handler
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _unary(self, behavior, method: str):
        async def unary(request, context):
            metadata = dict(context.invocation_metadata() or ())  # read once: span, log context, auth
            with self._server_span(method, metadata):
                started = self._bind(metadata, method)
                try:
                    with self._slot():
                        self._authenticate(request, context, metadata)
                        response = await behavior(request, context)
                except grpc.aio.AbortError as error:
                    self._done(started, method, request, None, error)
                    raise
                except Exception as error:  # noqa: BLE001 - the one place that maps every error
                    self._done(started, method, request, None, error)
                    await self._abort(context, error)
                except BaseException as error:  # cancelled: the caller went away
                    self._done(started, method, request, None, error)
                    raise
                else:
                    self._done(started, method, request, response, None)
                    return response

        return unary

    def _stream(self, behavior, method: str, streaming_requests: bool = False):
        """A server-streaming method's wrapper; with `streaming_requests`, a bidirectional one's (its
        requests are the handler's to read: the caller is authenticated here, the model it names is
        checked by the handler, and the log line counts what the stream answered)."""

        async def stream(request, context):
            metadata = dict(context.invocation_metadata() or ())  # read once: span, log context, auth
            with self._server_span(method, metadata):
                started = self._bind(metadata, method)
                last, failure = None, None
                try:
                    with self._slot():
                        self._authenticate(None if streaming_requests else request, context, metadata)
                        result = behavior(request, context)
                        if inspect.isawaitable(result):  # a servicer that writes with context.write()
                            await result
                        else:
                            async for response in result:
                                last = _tally(last, response) if streaming_requests else response
                                yield response
                except grpc.aio.AbortError as error:
                    failure = error
                    raise
                except Exception as error:  # noqa: BLE001
                    failure = error
                    await self._abort(context, error)
                except BaseException as error:
                    failure = error
                    raise
                finally:
                    self._done(started, method, last if streaming_requests else request, last, failure)

        return stream

    @staticmethod
    async def _abort(context, error: Exception) -> None:
        if isinstance(error, RouterError):
            status = to_status(error)  # logged once, in the request's line
        else:
            log.exception("rpc.internal_error", exc_info=error)
            status = internal_status()
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _server_span(self, method: str, metadata: dict) -> contextlib.AbstractContextManager:
        """The RPC's server span, current for the call, continuing the caller's W3C `traceparent`; nothing
        when tracing is off. (The router makes it itself, in the wrapper it has anyway: OpenTelemetry's gRPC
        interceptor wraps the handler and proxies the context anew for every call.)"""
        if not self._traced:
            return contextlib.nullcontext()
        return _ServerSpan(SERVICE_PREFIX + method, propagate.extract(metadata), method)

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold one of `max_rpcs` places for the call, or refuse it before its request is looked at."""
        now = time.monotonic()
        if self._active >= self._max_rpcs:
            # A slot frees about every mean call time / slots: the next refused caller's turn is then.
            turn = self._call_s.value / self._max_rpcs
            raise RouterError(
                errors.TOO_MANY_REQUESTS,
                f"the router has {self._active} calls in flight, its limit",
                retry_after_s=self._appointments.delay(now, turn, turn),
            )
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            self._call_s.add(time.monotonic() - now)

    def _authenticate(self, request, context, metadata: dict) -> None:
        """Who is calling and for which tenant (router/core/auth.py); the caller may use the model it
        names. Raises RouterError INVALID_ARGUMENT (a request that did not parse), UNAUTHENTICATED or
        PERMISSION_DENIED."""
        if request is not None and isinstance(request, _Malformed):  # there is no request to speak of
            raise errors.invalid(
                errors.MALFORMED_REQUEST,
                f"the request is not a valid {request.type_name} message (text fields must be UTF-8)",
            )
        bearer = metadata.get(AUTHORIZATION_KEY, "")
        scheme, _, key = bearer.partition(" ")
        names: list[str] = []
        if self._auth.enabled:
            peer = context.auth_context() or {}
            for field in ("x509_common_name", "x509_subject_alternative_name"):
                names += [value.decode(errors="replace") for value in peer.get(field, ())]
        caller = self._auth.authenticate(
            key.strip() if scheme.lower() == "bearer" else None, names, metadata.get(TENANT_KEY) or None
        )
        model = _model_of(request) if request is not None else ""
        if model:
            caller.check_model(model)
        set_caller(caller)
        structlog.contextvars.bind_contextvars(tenant=caller.tenant, principal=caller.principal.name)

    @staticmethod
    def _bind(metadata: dict, method: str) -> float:
        request_id = metadata.get(REQUEST_ID_KEY) or new_request_id()
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
        fields: dict = {"model": _model_of(request), "code": "OK"}
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
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", _CODE_NUMBERS.get(fields["code"], 2))
            if fields["code"] in _SERVER_FAULTS:  # OpenTelemetry's rule for gRPC server spans
                span.set_status(trace.Status(trace.StatusCode.ERROR, fields["code"]))
        elapsed = time.perf_counter() - started
        fields["ms"] = round(elapsed * 1000, 2)
        log.info("rpc", **fields)
        model = fields["model"] if self._knows(fields["model"]) else metrics.UNKNOWN_MODEL
        requests, seconds, tokens = _series(method, model, fields["code"])
        requests.inc()
        seconds.observe(elapsed)
        if fields["code"] == "OK" and "tokens" in fields:
            tokens.inc(fields["tokens"])


def interceptor_chain(
    knows: Callable[[str], bool], auth: Authenticator, max_rpcs: int
) -> list[grpc.aio.ServerInterceptor]:
    """The router's one interceptor; `knows` says whether a model name is served, `auth` who is calling,
    `max_rpcs` how many calls may be inside at once. With no OpenTelemetry exporter configured no span
    could leave the process, so none is made. Health and reflection are not wrapped (nor traced)."""
    return [RequestInterceptor(knows, auth, max_rpcs, traced=telemetry.tracing_configured())]
