"""Domain errors become gRPC statuses with google.rpc details."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from router.core import errors
from router.core.errors import ErrorKind, FieldViolation, RouterError
from router.grpc.gen.modelrouter.v1 import error_reason_pb2
from router.grpc.status import CODES, DOMAIN, PUSHBACK_KEY, internal_status, pushback_ms, to_status

PROTO = Path(__file__).parents[3] / "protos" / "modelrouter" / "v1" / "error_reason.proto"


def details(status: grpc.Status) -> status_pb2.Status:
    return status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])


def test_invalid_input_carries_error_info_and_field_violations():
    error = RouterError("INPUT_TOO_LONG", "too long", (FieldViolation("inputs[2]", "300 > 256"),))
    status = to_status(error)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    packed = details(status).details
    assert packed[0].Unpack(info) and info.reason == "INPUT_TOO_LONG" and info.domain == DOMAIN
    assert packed[1].Unpack(bad) and bad.field_violations[0].field == "inputs[2]"


def test_overload_carries_retry_info():
    status = to_status(RouterError("QUEUE_FULL", "busy", retry_after_s=0.25))
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert details(status).details[-1].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 250


def test_the_proto_declares_every_reason_the_router_sends_and_no_other():
    declared = set(error_reason_pb2.ErrorReason.keys()) - {"ERROR_REASON_UNSPECIFIED"}
    assert declared == set(errors.KINDS)


def test_each_reason_comes_with_the_code_its_proto_section_names():
    """error_reason.proto groups reasons under `// --- CODE` headings; each is sent with that code."""
    section, checked = "", 0
    for line in PROTO.read_text().splitlines():
        heading = re.match(r"\s*// --- ([A-Z_]+)", line)
        if heading:
            section = heading.group(1)
        value = re.match(r"\s*([A-Z_]+) = \d+;", line)
        if value and value.group(1) != "ERROR_REASON_UNSPECIFIED":
            assert to_status(RouterError(value.group(1), "m")).code.name == section, value.group(1)
            checked += 1
    assert checked == len(errors.KINDS)


def test_every_kind_maps_to_a_code():
    assert set(CODES) == set(ErrorKind)


def test_an_undeclared_reason_is_a_programming_error():
    with pytest.raises(ValueError):
        RouterError("SOMETHING_NEW", "m")
    with pytest.raises(ValueError):
        errors.invalid(errors.QUEUE_FULL, "not an invalid-input reason")


def test_a_retry_delay_travels_as_grpc_retry_pushback_ms_too():
    status = to_status(RouterError(errors.QUEUE_FULL, "busy", retry_after_s=0.2501))
    assert dict(status.trailing_metadata)[PUSHBACK_KEY] == "251"
    assert PUSHBACK_KEY not in dict(to_status(RouterError(errors.EMPTY_QUERY, "m")).trailing_metadata)
    assert pushback_ms(0) == "1"  # 0 would mean "at once" to gRPC's retry policy


def test_a_status_stays_under_8_kib_whatever_the_error_holds():
    huge = "x" * 100_000
    error = RouterError(
        "INPUT_TOO_LONG",
        huge,
        tuple(FieldViolation(f"inputs[{i}]", huge) for i in range(10_000)),
        metadata={"model": huge, "other": huge},
    )
    status = to_status(error)
    value = dict(status.trailing_metadata)["grpc-status-details-bin"]
    on_the_wire = 4 * -(-len(value) // 3) + len(status.details.encode())  # details travel base64-encoded
    assert on_the_wire <= 4096  # well under the 8 KiB clients accept
    bad = error_details_pb2.BadRequest()
    assert details(status).details[1].Unpack(bad)
    listed = len(bad.field_violations) - 1
    assert 1 <= listed <= 20 and f"{10_000 - listed} more" in bad.field_violations[-1].description


def test_internal_has_fixed_message():
    status = internal_status()
    assert status.code is grpc.StatusCode.INTERNAL and "log" in status.details
