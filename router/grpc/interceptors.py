"""The router's one interceptor, around every method of its service, as named steps:

1. the server span (server_span.py), outermost, so it records the real status code and every log line
   and child span of the call belongs to it (only when OpenTelemetry is configured);
2. the log context (request_log.bind): request id, method, tenant, trace ids on every line of the call;
3. a place among `max_concurrent_rpcs` (call_cap.py), refused before the request is looked at;
4. who is calling and whether they may use the model (caller.py), a malformed request refused here
   (malformed.py);
5. the handler; a RouterError becomes its status with google.rpc details, anything else INTERNAL with a
   fixed message (its traceback logged once);
6. the call's one `rpc` line and its metrics (request_log.finish).

The steps share one wrapper (one coroutine frame per call, the wrapped handler made once per method).
Only the router's own service is wrapped; health and reflection pass through untouched (and untraced).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import grpc
import structlog

from router.core.auth import Authenticator
from router.core.errors import RouterError
from router.grpc.call_cap import CallCap
from router.grpc.caller import authenticate, model_of
from router.grpc.malformed import tolerant
from router.grpc.request_log import Outcome, bind, finish
from router.grpc.server_span import SERVICE_NAME, server_span
from router.grpc.status import internal_status, to_status
from router.observability import telemetry

log = structlog.get_logger("router.rpc")

SERVICE_PREFIX = f"/{SERVICE_NAME}/"


class RequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        knows: Callable[[str], bool],
        auth: Authenticator | None = None,
        max_rpcs: int = 1 << 30,
        traced: bool = False,
    ) -> None:
        self._auth = auth or Authenticator()
        self._traced = traced
        self._cap = CallCap(max_rpcs)
        self._knows = knows
        """Whether a model name is one the router serves (for metric labels)."""
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    @property
    def last_arrival(self) -> float:
        """When the latest call of the service came in (time.monotonic())."""
        return self._cap.last_arrival

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(SERVICE_PREFIX):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method[len(SERVICE_PREFIX) :])
        if wrapped is not None:
            self._wrapped[method] = (handler, wrapped)
        return wrapped or handler

    def _wrap(self, handler: grpc.RpcMethodHandler, name: str) -> grpc.RpcMethodHandler | None:
        parts = {
            "request_deserializer": tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, name), **parts)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._stream(handler.unary_stream, name), **parts)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, name, streaming_requests=True), **parts
            )
        return None

    def _unary(self, behavior, method: str):
        async def unary(request, context):
            metadata = dict(context.invocation_metadata() or ())  # read once: span, log context, auth
            with server_span(self._traced, method, metadata):
                started = bind(metadata, method)
                outcome, failure = Outcome(model_of(request)), None
                try:
                    with self._cap.slot():
                        authenticate(self._auth, request, context, metadata)
                        response = await behavior(request, context)
                    outcome.add(response)
                    return response
                except grpc.aio.AbortError as error:
                    failure = error
                    raise
                except Exception as error:  # noqa: BLE001 - the one place that maps every error
                    failure = error
                    finish(outcome, started, method, failure, self._knows(outcome.model))  # before the caller hears
                    outcome = None
                    await _abort(context, error)
                except BaseException as error:  # cancelled: the caller went away
                    failure = error
                    raise
                finally:
                    if outcome is not None:  # not yet written
                        finish(outcome, started, method, failure, self._knows(outcome.model))

        return unary

    def _stream(self, behavior, method: str, streaming_requests: bool = False):
        """A server-streaming method's wrapper; with `streaming_requests`, a bidirectional one's (its
        requests are the handler's to read: the caller is authenticated here, the model it names is
        checked by the handler, and the log line counts what the stream answered)."""

        async def stream(request, context):
            metadata = dict(context.invocation_metadata() or ())  # read once: span, log context, auth
            with server_span(self._traced, method, metadata):
                started = bind(metadata, method)
                outcome, failure = Outcome("" if streaming_requests else model_of(request)), None
                try:
                    with self._cap.slot():
                        authenticate(self._auth, None if streaming_requests else request, context, metadata)
                        result = behavior(request, context)
                        if inspect.isawaitable(result):  # a servicer that writes with context.write()
                            await result
                        else:
                            async for response in result:
                                outcome.add(response)
                                yield response
                except grpc.aio.AbortError as error:
                    failure = error
                    raise
                except Exception as error:  # noqa: BLE001
                    failure = error
                    finish(outcome, started, method, failure, self._knows(outcome.model))  # before the caller hears
                    outcome = None
                    await _abort(context, error)
                except BaseException as error:
                    failure = error
                    raise
                finally:
                    if outcome is not None:  # not yet written
                        finish(outcome, started, method, failure, self._knows(outcome.model))

        return stream


async def _abort(context, error: Exception) -> None:
    """End the call with the error's status: a RouterError's own, anything else INTERNAL."""
    if isinstance(error, RouterError):
        status = to_status(error)  # logged once, in the request's line
    else:
        log.exception("rpc.internal_error", exc_info=error)
        status = internal_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


def interceptor_chain(
    knows: Callable[[str], bool], auth: Authenticator, max_rpcs: int
) -> list[grpc.aio.ServerInterceptor]:
    """The router's one interceptor; `knows` says whether a model name is served, `auth` who is calling,
    `max_rpcs` how many calls may be inside at once. With no OpenTelemetry exporter configured no span
    could leave the process, so none is made. Health and reflection are not wrapped (nor traced)."""
    return [RequestInterceptor(knows, auth, max_rpcs, traced=telemetry.tracing_configured())]
