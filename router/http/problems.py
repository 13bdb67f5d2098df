"""Errors over HTTP: the core's RouterError as OpenAI's error body, with the status a client acts on.

`{"error": {"message", "type", "param", "code"}}`: `code` is the router's reason (the same names as the
gRPC API's ErrorInfo.reason), `param` the request field at fault, `type` OpenAI's family of the status.
A refusal with a retry delay (RetryInfo over gRPC) carries it as `Retry-After` (whole seconds, as HTTP
defines it) and `retry-after-ms` (the `openai` package reads this one first).
"""

from __future__ import annotations

import math
import re

import pydantic
from starlette.responses import Response

from router.core import errors
from router.core.errors import ErrorKind, FieldViolation, RouterError, clip
from router.grpc.status import pushback_ms
from router.http.schemas import ErrorBody, ErrorResponse

INTERNAL_MESSAGE = "internal error; the router's log has the details"
MAX_MESSAGE_CHARS = 1024

# (status, OpenAI's error type) of each kind; the overloaded and unavailable ones carry Retry-After.
STATUSES = {
    ErrorKind.INVALID_INPUT: (400, "invalid_request_error"),
    ErrorKind.NOT_FOUND: (404, "not_found_error"),
    ErrorKind.UNAUTHENTICATED: (401, "authentication_error"),
    ErrorKind.PERMISSION_DENIED: (403, "permission_error"),
    ErrorKind.OVERLOADED: (429, "rate_limit_error"),
    ErrorKind.DEADLINE_EXCEEDED: (504, "timeout_error"),
    ErrorKind.NOT_READY: (503, "service_unavailable_error"),
    ErrorKind.BACKEND_UNAVAILABLE: (503, "service_unavailable_error"),
    ErrorKind.BACKEND_FAILED: (502, "server_error"),
    ErrorKind.INTERNAL: (500, "server_error"),
}
TOO_LARGE = {errors.TOO_MANY_CHARACTERS, errors.TOO_MANY_INPUTS, errors.TOO_MANY_TOKENS}
"""Reasons that say the request is bigger than the router takes: 413, as for a body over the limit."""

_INDEX = re.compile(r"^(\w+)")


def status_of(error: RouterError) -> int:
    if error.reason in TOO_LARGE:
        return 413
    return STATUSES[error.kind][0]


def error_response(error: RouterError, fields: dict[str, str] | None = None) -> Response:
    """The error as a response; `fields` renames the core's field names to the route's (`inputs` -> `input`)."""
    status = status_of(error)
    param = _param(error.violations[0].field, fields or {}) if error.violations else None
    message = clip(error.message, MAX_MESSAGE_CHARS)
    extra = [v for v in error.violations if v.description]
    if extra:
        message += "; " + "; ".join(f"{_param(v.field, fields or {})}: {v.description}" for v in extra[:5])
    body = ErrorResponse(error=ErrorBody(message=message, type=STATUSES[error.kind][1], param=param, code=error.reason))
    headers = {}
    if error.retry_after_s is not None:
        seconds = max(0.0, error.retry_after_s)
        headers = {
            "retry-after": str(max(1, math.ceil(seconds))),
            "retry-after-ms": pushback_ms(seconds),  # gRPC's pushback rule: whole milliseconds, at least 1
        }
    return Response(body.model_dump_json(), status, headers, media_type="application/json")


def error_event(error: RouterError) -> str:
    """The error as a server-sent event's data, for a stream that already started (OpenAI's form)."""
    body = ErrorResponse(
        error=ErrorBody(message=clip(error.message, MAX_MESSAGE_CHARS), type=STATUSES[error.kind][1], code=error.reason)
    )
    return body.model_dump_json()


async def no_route(request, error) -> Response:
    """A path or method the API does not have (Starlette's 404 and 405), in OpenAI's error body."""
    status = error.status_code
    code = "ROUTE_NOT_FOUND" if status == 404 else "METHOD_NOT_ALLOWED"
    message = f"{request.method} {clip(request.url.path, 200)}: {'no such route' if status == 404 else 'not allowed'}"
    body = ErrorResponse(error=ErrorBody(message=message, type="invalid_request_error", code=code))
    return Response(body.model_dump_json(), status, getattr(error, "headers", None), media_type="application/json")


def internal_response() -> Response:
    body = ErrorResponse(error=ErrorBody(message=INTERNAL_MESSAGE, type="server_error", code=errors.INTERNAL))
    return Response(body.model_dump_json(), 500, media_type="application/json")


def _param(field: str, renamed: dict[str, str]) -> str:
    """A core field path in the route's names: `inputs[3]` -> `input[3]`."""
    match = _INDEX.match(field)
    if match is None or match.group(1) not in renamed:
        return field
    return renamed[match.group(1)] + field[match.end() :]


def invalid_body(error: pydantic.ValidationError) -> RouterError:
    """A body whose JSON does not parse, or does not fit the schema: MALFORMED_REQUEST or INVALID_VALUE,
    each bad field named."""
    problems = error.errors(include_url=False, include_input=False)
    if any(p["type"] in ("json_invalid", "json_type") for p in problems):
        return errors.invalid(errors.MALFORMED_REQUEST, "the request body is not valid JSON")
    violations: dict[str, FieldViolation] = {}
    for problem in problems:
        path = _path(problem["loc"])
        violations.setdefault(path, FieldViolation(path, clip(problem["msg"], 160)))
    return errors.invalid(
        errors.INVALID_VALUE,
        f"the request body does not fit the schema ({len(violations)} problem{'s' * (len(violations) > 1)})",
        violations.values(),
    )


def _path(loc: tuple) -> str:
    """A field's path as a caller writes it (`messages[2].content`), without the union members pydantic
    names in its locations (`input.list[int].2` is `input[2]`)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier() and not part[0].isupper() and part not in _TYPE_TAGS:
            path += f".{part}" if path else part
    return path or "body"


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def unsupported(fields: list[str]) -> RouterError:
    return errors.invalid(
        errors.UNSUPPORTED_OPTION,
        f"the router does not support {', '.join(repr(f) for f in fields)} (an option is refused, never dropped)",
        [FieldViolation(f, "not supported here; leave it unset") for f in fields],
    )


def body_too_large(limit: int) -> RouterError:
    return errors.invalid(
        errors.TOO_MANY_CHARACTERS,
        f"the request body is over {limit} bytes (http_max_body_bytes)",
        [FieldViolation("body", f"at most {limit} bytes")],
        limit=limit,
    )
