"""Domain errors become gRPC statuses with google.rpc details."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from router.core.errors import ErrorKind, FieldViolation, RouterError
from router.grpc.status import DOMAIN, internal_status, to_status


def details(status: grpc.Status) -> status_pb2.Status:
    [(key, value)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


def test_invalid_input_carries_error_info_and_field_violations():
    error = RouterError(
        ErrorKind.INVALID_INPUT, "INPUT_TOO_LONG", "too long", (FieldViolation("inputs[2]", "300 > 256"),)
    )
    status = to_status(error)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    packed = details(status).details
    assert packed[0].Unpack(info) and info.reason == "INPUT_TOO_LONG" and info.domain == DOMAIN
    assert packed[1].Unpack(bad) and bad.field_violations[0].field == "inputs[2]"


def test_overload_carries_retry_info():
    status = to_status(RouterError(ErrorKind.OVERLOADED, "QUEUE_FULL", "busy", retry_after_s=0.25))
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert details(status).details[-1].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 250


def test_every_kind_has_a_code():
    for kind in ErrorKind:
        assert to_status(RouterError(kind, "R", "m")).code is not None


def test_internal_has_fixed_message():
    status = internal_status()
    assert status.code is grpc.StatusCode.INTERNAL and "log" in status.details
