"""Each HTTP call's steps, as the gRPC interceptor's are for a gRPC call (router/grpc/interceptors.py):

1. the server span (only when OpenTelemetry is configured), continuing the caller's `traceparent` header;
2. the log context: request id (`x-request-id`, or a new one), method, tenant, trace ids;
3. a place among `max_concurrent_rpcs` (the HTTP listener counts its own calls);
4. the body, read up to `http_max_body_bytes` (413 past it, before any of it is parsed), then parsed by
   its schema (schemas.py) straight from the bytes;
5. who is calling (`Authorization: Bearer <key>`, `x-tenant-id`) and whether they may use the model;
6. the handler, within the call's deadline (`X-Request-Timeout` seconds, else `http_request_timeout_s`);
   a RouterError becomes its status and OpenAI error body (problems.py), anything else a 500 with a
   fixed message (its traceback logged once);
7. the response sent (a stream to its end), then the call's one `http` log line and its metrics.

Each route is an ASGI app of its own (`Endpoint`), so the steps wrap the whole response, a stream's too,
in one task: its span, log context and place last until the last event is sent.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pydantic
import structlog
from opentelemetry import trace
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.core import errors
from router.core.auth import Authenticator, Caller
from router.core.criticality import Criticality
from router.core.errors import FieldViolation, RouterError
from router.core.services.types import CallContext
from router.grpc.call_cap import CallCap
from router.http import problems
from router.http.schemas import Body
from router.observability import logs, metrics, tracing

log = structlog.get_logger("router.http")

TENANT_HEADER = "x-tenant-id"
CLIENT_GONE = 499
"""The status logged for a call whose caller left before its answer (nginx's convention; nothing is sent)."""
TIMEOUT_HEADER = "x-request-timeout"
_SERVER_FAULTS = range(500, 600)


@dataclass
class HttpCall:
    """One call as a handler sees it: who calls, until when, how much it matters, and what it reports."""

    caller: Caller
    context: CallContext
    request: Request
    model: str = ""
    tokens: int | None = None
    status: int = 200
    """A stream's status as it ended (an error after the first event cannot change the HTTP status)."""
    reason: str | None = None
    renamed: dict[str, str] = field(default_factory=dict)


Handler = Callable[[HttpCall, Body], Awaitable[Response]]


class ClientGone(Exception):
    """The caller closed the connection before the answer: its work was cancelled, nothing is sent."""


class Edge:
    """What every route shares: the router's authenticator, the call cap, the body limit, the deadline."""

    def __init__(
        self,
        auth: Authenticator,
        knows: Callable[[str], bool],
        max_calls: int,
        max_body_bytes: int,
        timeout_s: float | None,
        traced: bool,
    ) -> None:
        self.auth = auth
        self.knows = knows
        """Whether a model name is one the router serves (only those become metric labels)."""
        self.cap = CallCap(max_calls)
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self.traced = traced

    def route(
        self,
        method: str,
        path: str,
        name: str,
        schema: type[Body] | None,
        handler: Handler,
        renamed: dict[str, str] | None = None,
    ) -> Route:
        """One route: `name` in logs and metrics, the body's `schema` (None: no body), `renamed` the core's
        field names in this route's (for errors' `param`)."""
        endpoint = Endpoint(self, f"{method} {path}", name, schema, handler, renamed or {})
        return Route(path, endpoint, methods=[method])


class Endpoint:
    def __init__(
        self, edge: Edge, route: str, name: str, schema: type[Body] | None, handler: Handler, renamed: dict
    ) -> None:
        self.edge = edge
        self.route = route
        """`POST /v1/embeddings`: the span's name (the path's template, never a caller's model name)."""
        self.name = name
        self.method = f"http.{name}"
        self.schema = schema
        self.handler = handler
        self.renamed = renamed

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        headers = request.headers
        if not self.edge.traced:
            await self._serve(request, headers, send)
            return
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"], "http.route": self.route}
        with tracing.ServerSpan(self.route, headers, attributes):
            await self._serve(request, headers, send)

    async def _serve(self, request: Request, headers, send) -> None:
        started = logs.bind_call(headers.get(logs.REQUEST_ID_KEY), self.method, headers.get(TENANT_HEADER, ""))
        try:
            with self.edge.cap.slot():  # held until the response is sent: a stream's place lasts as long
                await self._answer(request, headers, send, started)
        except RouterError as refused:  # no place among max_concurrent_rpcs: refused before any reading
            await self._send(problems.error_response(refused), request, send, started, None, refused)

    async def _answer(self, request: Request, headers, send, started: float) -> None:
        call: HttpCall | None = None
        error: RouterError | None = None
        try:
            call, body = await self._enter(request, headers)
            response = await self._within_deadline(call, body)
        except RouterError as refused:
            error = refused
            response = problems.error_response(refused, self.renamed)
        except ClientGone:
            self._finish(call, started, CLIENT_GONE, None, None)
            return
        except Exception as failure:  # noqa: BLE001 - the one place that maps every error
            log.exception("http.internal_error", exc_info=failure)
            response = problems.internal_response()
        await self._send(response, request, send, started, call, error)

    async def _send(
        self, response: Response, request: Request, send, started: float, call: HttpCall | None, error
    ) -> None:
        """Send the response (a stream to its end), then write the call's line."""
        status, reason = response.status_code, error.reason if error else None
        try:
            await response(request.scope, request.receive, send)
        finally:
            if call is not None and call.status != 200:  # a stream that failed after it started
                status, reason = call.status, call.reason
            self._finish(call, started, status, reason, error)

    async def _enter(self, request: Request, headers) -> tuple[HttpCall, Body | None]:
        body = None
        if self.schema is not None:
            raw = await self._read(request, headers)
            try:
                body = self.schema.model_validate_json(raw)
            except pydantic.ValidationError as invalid:
                raise problems.invalid_body(invalid) from None
            extras = body.asked_extras()
            if extras:
                raise problems.unsupported(extras)
        scheme, _, key = headers.get("authorization", "").partition(" ")
        caller = self.edge.auth.authenticate(
            key.strip() if scheme.lower() == "bearer" else None, (), headers.get(TENANT_HEADER) or None
        )
        structlog.contextvars.bind_contextvars(tenant=caller.tenant, principal=caller.principal.name)
        model = body.model if body is not None else ""
        if model:
            caller.check_model(model)
        asked = Criticality[body.criticality] if body is not None and body.criticality else Criticality.DEFAULT
        context = CallContext(caller.tenant, self._deadline(headers), caller.criticality(asked))
        return HttpCall(caller, context, request, model, renamed=self.renamed), body

    async def _read(self, request: Request, headers) -> bytes:
        """The body, refused (413) as soon as it passes the limit: by its Content-Length, or as it comes."""
        limit = self.edge.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise problems.body_too_large(limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise problems.body_too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _deadline(self, headers) -> float | None:
        raw = headers.get(TIMEOUT_HEADER)
        if raw is None:
            seconds = self.edge.timeout_s
        else:
            try:
                seconds = float(raw)
            except ValueError:
                seconds = math.nan
            if not 0 < seconds < math.inf:
                raise errors.invalid(
                    errors.INVALID_VALUE,
                    f"X-Request-Timeout must be a positive number of seconds, got {errors.echo(raw)}",
                    [FieldViolation("X-Request-Timeout", "seconds, for example 2.5")],
                )
        return None if seconds is None else time.monotonic() + seconds

    async def _within_deadline(self, call: HttpCall, body: Body | None) -> Response:
        """The handler's response, or DEADLINE_EXPIRED (504) once the deadline passes. (A stream's deadline
        runs on in the core, which ends the generation with BACKEND_DEADLINE.)"""
        deadline = call.context.deadline
        if deadline is None:
            return await self.handler(call, body)
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                return await self.handler(call, body)
        except TimeoutError:
            raise RouterError(errors.DEADLINE_EXPIRED, "the request's deadline passed before its answer") from None

    def _finish(
        self, call: HttpCall | None, started: float, status: int, reason: str | None, error: RouterError | None
    ) -> None:
        """The call's line, its span's status and its metrics (only served models become metric labels)."""
        model = call.model if call is not None else ""
        fields: dict = {"model": model, "status": status}
        if reason:
            fields["reason"] = reason
        if error is not None:
            fields["error"] = error.message
        if call is not None and call.tokens is not None:
            fields["tokens"] = call.tokens
        elapsed = time.perf_counter() - started
        fields["ms"] = round(elapsed * 1000, 2)
        log.info("http", **fields)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if status in _SERVER_FAULTS:
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(status)))
        known = model if model and self.edge.knows(model) else metrics.UNKNOWN_MODEL
        tokens = call.tokens if status == 200 and call is not None else None
        metrics.count_request(self.method, known, str(status), elapsed, tokens)
