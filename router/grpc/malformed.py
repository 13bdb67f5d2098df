"""Requests whose bytes do not parse as their message type (invalid UTF-8 in a string field, a truncated
message): the interceptor's deserializer hands them on as `Malformed`, and the call is refused with
INVALID_ARGUMENT `MALFORMED_REQUEST`, where gRPC itself would answer UNKNOWN."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from router.core import errors
from router.core.errors import RouterError


@dataclass(frozen=True)
class Malformed:
    type_name: str

    def error(self) -> RouterError:
        return errors.invalid(
            errors.MALFORMED_REQUEST,
            f"the request is not a valid {self.type_name} message (text fields must be UTF-8)",
        )


def tolerant(deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    """`deserialize`, returning Malformed instead of raising on bytes that do not parse."""
    if deserialize is None:
        return None
    type_name = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    type_name = type_name.name if type_name is not None else "request"

    def parse(data: bytes) -> object:
        try:
            return deserialize(data)
        except DecodeError:
            return Malformed(type_name)

    return parse
