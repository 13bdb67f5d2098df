"""Map domain errors to gRPC statuses with google.rpc details (ErrorInfo, BadRequest, RetryInfo)."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from router.core.errors import ErrorKind, RouterError

DOMAIN = "modelrouter.v1"
INTERNAL_MESSAGE = "internal error; the router's log has the details"

_CODES = {
    ErrorKind.INVALID_INPUT: code_pb2.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: code_pb2.NOT_FOUND,
    ErrorKind.OVERLOADED: code_pb2.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    ErrorKind.NOT_READY: code_pb2.UNAVAILABLE,
    ErrorKind.BACKEND_UNAVAILABLE: code_pb2.UNAVAILABLE,
    ErrorKind.BACKEND_FAILED: code_pb2.INTERNAL,
    ErrorKind.UNIMPLEMENTED: code_pb2.UNIMPLEMENTED,
    ErrorKind.CANCELLED: code_pb2.CANCELLED,
}


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: RouterError) -> grpc.Status:
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata))]
    if error.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in error.violations
                    ]
                )
            )
        )
    if error.retry_after_s is not None:
        seconds = max(0.0, error.retry_after_s)
        delay = duration_pb2.Duration(seconds=int(seconds), nanos=int(math.modf(seconds)[0] * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(status_pb2.Status(code=_CODES[error.kind], message=error.message, details=details))


def internal_status() -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    return rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE, details=[_pack(info)])
    )
