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


def test_every_kind_maps_to_its_code():
    expected = {
        ErrorKind.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
        ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
        ErrorKind.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
        ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
        ErrorKind.NOT_READY: grpc.StatusCode.UNAVAILABLE,
        ErrorKind.BACKEND_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
        ErrorKind.BACKEND_FAILED: grpc.StatusCode.INTERNAL,
        ErrorKind.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
        ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
        ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
        ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    }
    assert set(expected) == set(ErrorKind)
    for kind, code in expected.items():
        assert to_status(RouterError(kind, "R", "m")).code is code


def test_a_status_stays_under_8_kib_whatever_the_error_holds():
    huge = "x" * 100_000
    error = RouterError(
        ErrorKind.INVALID_INPUT,
        "INPUT_TOO_LONG",
        huge,
        tuple(FieldViolation(f"inputs[{i}]", huge) for i in range(10_000)),
        metadata={"model": huge, "other": huge},
    )
    status = to_status(error)
    [(_, value)] = status.trailing_metadata
    on_the_wire = 4 * -(-len(value) // 3) + len(status.details.encode())  # details travel base64-encoded
    assert on_the_wire <= 4096  # well under the 8 KiB clients accept
    bad = error_details_pb2.BadRequest()
    assert details(status).details[1].Unpack(bad)
    listed = len(bad.field_violations) - 1
    assert 1 <= listed <= 20 and f"{10_000 - listed} more" in bad.field_violations[-1].description


def test_internal_has_fixed_message():
    status = internal_status()
    assert status.code is grpc.StatusCode.INTERNAL and "log" in status.details
