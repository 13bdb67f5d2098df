"""Map domain errors to gRPC statuses with google.rpc details (ErrorInfo, BadRequest, RetryInfo).

Every status stays well under 8 KiB, the size of trailers gRPC clients accept by default (past it a
caller sees RESOURCE_EXHAUSTED "received metadata size exceeds soft limit" instead of the real error):
the core already cuts the caller's values it echoes (errors.echo); here the message, each metadata value
and each field violation are capped again, at most MAX_VIOLATIONS violations are listed (fewer if the
status would pass STATUS_BUDGET_BYTES), and a last one says how many more there were.

A status that carries RetryInfo also carries its delay as `grpc-retry-pushback-ms`, so a stock gRPC
client with the retry policy of protos/modelrouter/v1/service_config.json waits as long before trying
again, with no code of its own.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from router.core.errors import INTERNAL, ErrorKind, RouterError, clip

DOMAIN = "modelrouter.v1"
PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""Sent beside every RetryInfo: the delay gRPC's built-in retry policy honours, in every language."""
INTERNAL_MESSAGE = "internal error; the router's log has the details"

MAX_MESSAGE_CHARS = 512
MAX_METADATA_ENTRIES = 10
MAX_METADATA_CHARS = 128
MAX_VIOLATIONS = 20
MAX_VIOLATION_CHARS = 160
STATUS_BUDGET_BYTES = 4096
"""The message plus the base64 of the details (as they travel in `grpc-status-details-bin`): half of
what clients accept by default, leaving room for the other trailers."""

CODES = {
    ErrorKind.INVALID_INPUT: code_pb2.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: code_pb2.NOT_FOUND,
    ErrorKind.OVERLOADED: code_pb2.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    ErrorKind.NOT_READY: code_pb2.UNAVAILABLE,
    ErrorKind.BACKEND_UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorKind.BACKEND_FAILED: code_pb2.INTERNAL,
    ErrorKind.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    ErrorKind.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    ErrorKind.INTERNAL: code_pb2.INTERNAL,
}


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _violations(error: RouterError, count: int) -> list[error_details_pb2.BadRequest.FieldViolation]:
    listed = [
        error_details_pb2.BadRequest.FieldViolation(
            field=clip(v.field, MAX_VIOLATION_CHARS), description=clip(v.description, MAX_VIOLATION_CHARS)
        )
        for v in error.violations[:count]
    ]
    more = len(error.violations) - len(listed)
    if more > 0:
        listed.append(error_details_pb2.BadRequest.FieldViolation(field="", description=f"and {more} more, not listed"))
    return listed


def to_status(error: RouterError) -> grpc.Status:
    message = clip(error.message, MAX_MESSAGE_CHARS)
    count = MAX_VIOLATIONS
    while True:
        status = status_pb2.Status(code=CODES[error.kind], message=message, details=_details(error, count))
        size = len(message.encode()) + 4 * math.ceil(status.ByteSize() / 3)
        if size <= STATUS_BUDGET_BYTES or count == 0:
            converted = rpc_status.to_status(status)
            if error.retry_after_s is None:
                return converted
            return converted._replace(
                trailing_metadata=(*converted.trailing_metadata, (PUSHBACK_KEY, pushback_ms(error.retry_after_s)))
            )
        count //= 2


def pushback_ms(seconds: float) -> str:
    """RetryInfo's delay as gRPC's own retry policy reads it: whole milliseconds, at least 1 (gRPC takes
    0 as "retry at once" and a negative or malformed value as "do not retry")."""
    return str(max(1, math.ceil(seconds * 1000)))


def _details(error: RouterError, violations: int) -> list[any_pb2.Any]:
    metadata = {
        clip(k, 64): clip(v, MAX_METADATA_CHARS) for k, v in list(error.metadata.items())[:MAX_METADATA_ENTRIES]
    }
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata))]
    if error.violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=_violations(error, violations))))
    if error.retry_after_s is not None:
        seconds = max(0.0, error.retry_after_s)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int(math.modf(seconds)[0] * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return details


def internal_status() -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=INTERNAL, domain=DOMAIN)
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE, details=[_pack(info)])
    )
