"""Domain errors. They carry a kind and a reason, never a transport status code.

The gRPC layer maps each kind to a status code with `google.rpc` details (router/grpc/status.py); a
future HTTP front end would map the same kinds to its own codes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class ErrorKind(enum.Enum):
    INVALID_INPUT = "invalid_input"
    NOT_FOUND = "not_found"
    OVERLOADED = "overloaded"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_READY = "not_ready"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_FAILED = "backend_failed"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    INTERNAL = "internal"


# Reasons, shared by every transport. Clients match on these, never on messages. Each has one kind, so
# one status code: KINDS below is the only place that pairs them, and the proto's ErrorReason enum
# (protos/modelrouter/v1/error_reason.proto) declares exactly these names (a unit test holds the two
# together).
MALFORMED_REQUEST = "MALFORMED_REQUEST"
"""The request's bytes are not a valid message of its type (a text field that is not UTF-8, say)."""
MODEL_REQUIRED = "MODEL_REQUIRED"
WRONG_TASK = "WRONG_TASK"
EMPTY_INPUTS = "EMPTY_INPUTS"
EMPTY_QUERY = "EMPTY_QUERY"
EMPTY_DOCUMENTS = "EMPTY_DOCUMENTS"
INVALID_VALUE = "INVALID_VALUE"
UNSUPPORTED_OPTION = "UNSUPPORTED_OPTION"
INPUT_TOO_LONG = "INPUT_TOO_LONG"
QUERY_TOO_LONG = "QUERY_TOO_LONG"
CONTEXT_TOO_LONG = "CONTEXT_TOO_LONG"
"""Generate: the prompt and max_tokens do not fit the model's context."""
TOO_MANY_INPUTS = "TOO_MANY_INPUTS"
TOO_MANY_TOKENS = "TOO_MANY_TOKENS"
TOO_MANY_CHARACTERS = "TOO_MANY_CHARACTERS"
"""More text than `max_characters_per_request`, refused before tokenizing."""
MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
MODEL_VERSION_NOT_FOUND = "MODEL_VERSION_NOT_FOUND"
"""The model is served, but not in the version the request names."""
CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
"""Authentication is on and the call carried neither an API key nor a client certificate."""
CREDENTIALS_INVALID = "CREDENTIALS_INVALID"
"""The API key or client certificate matches no principal."""
MODEL_NOT_ALLOWED = "MODEL_NOT_ALLOWED"
"""The caller's principal may not use this model."""
TENANT_NOT_ALLOWED = "TENANT_NOT_ALLOWED"
"""The call named a tenant (x-tenant-id) other than its principal's, which may not act for others."""
QUEUE_FULL = "QUEUE_FULL"
TENANT_RATE_LIMITED = "TENANT_RATE_LIMITED"
TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
"""The router holds `max_concurrent_rpcs` calls already; retry after the delay given."""
BACKEND_OVERLOADED = "BACKEND_OVERLOADED"
CLIENT_THROTTLED = "CLIENT_THROTTLED"  # set by the caller's throttle, never by the router
DEADLINE_TOO_SHORT = "DEADLINE_TOO_SHORT"
DEADLINE_EXPIRED = "DEADLINE_EXPIRED"
BACKEND_DEADLINE = "BACKEND_DEADLINE"
MODEL_NOT_READY = "MODEL_NOT_READY"
MODEL_UNUSABLE = "MODEL_UNUSABLE"
SHUTTING_DOWN = "SHUTTING_DOWN"
BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
BACKEND_INDEX_UNAVAILABLE = "BACKEND_INDEX_UNAVAILABLE"
MODEL_VERSION_GONE = "MODEL_VERSION_GONE"
"""The model version a batch was pinned to is no longer on any server (a rollout unloaded it)."""
BACKEND_FAILED = "BACKEND_FAILED"
BAD_MODEL_CONTRACT = "BAD_MODEL_CONTRACT"
INTERNAL = "INTERNAL"

_BY_KIND = {
    ErrorKind.INVALID_INPUT: (
        MALFORMED_REQUEST,
        MODEL_REQUIRED,
        WRONG_TASK,
        EMPTY_INPUTS,
        EMPTY_QUERY,
        EMPTY_DOCUMENTS,
        INVALID_VALUE,
        UNSUPPORTED_OPTION,
        INPUT_TOO_LONG,
        QUERY_TOO_LONG,
        CONTEXT_TOO_LONG,
        TOO_MANY_INPUTS,
        TOO_MANY_TOKENS,
        TOO_MANY_CHARACTERS,
    ),
    ErrorKind.NOT_FOUND: (MODEL_NOT_FOUND, MODEL_VERSION_NOT_FOUND),
    ErrorKind.UNAUTHENTICATED: (CREDENTIALS_MISSING, CREDENTIALS_INVALID),
    ErrorKind.PERMISSION_DENIED: (MODEL_NOT_ALLOWED, TENANT_NOT_ALLOWED),
    ErrorKind.OVERLOADED: (QUEUE_FULL, TENANT_RATE_LIMITED, TOO_MANY_REQUESTS, BACKEND_OVERLOADED, CLIENT_THROTTLED),
    ErrorKind.DEADLINE_EXCEEDED: (DEADLINE_TOO_SHORT, DEADLINE_EXPIRED, BACKEND_DEADLINE),
    ErrorKind.NOT_READY: (MODEL_NOT_READY, MODEL_UNUSABLE, SHUTTING_DOWN),
    ErrorKind.BACKEND_UNAVAILABLE: (BACKEND_UNAVAILABLE, BACKEND_INDEX_UNAVAILABLE, MODEL_VERSION_GONE),
    ErrorKind.BACKEND_FAILED: (BACKEND_FAILED, BAD_MODEL_CONTRACT),
    ErrorKind.INTERNAL: (INTERNAL,),
}
KINDS: dict[str, ErrorKind] = {reason: kind for kind, reasons in _BY_KIND.items() for reason in reasons}
"""Every reason in ErrorReason (the router sends all but CLIENT_THROTTLED), and its kind (so its status code)."""


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: `field` is a path into the request such as `inputs[3]`."""

    field: str
    description: str


@dataclass
class RouterError(Exception):
    """An error a caller should see: a stable UPPER_SNAKE reason (which fixes its kind), and the details."""

    reason: str
    message: str
    violations: tuple[FieldViolation, ...] = ()
    retry_after_s: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reason not in KINDS:
            raise ValueError(f"{self.reason!r} is not a declared reason (errors.KINDS)")
        super().__init__(self.message)

    @property
    def kind(self) -> ErrorKind:
        return KINDS[self.reason]

    def __str__(self) -> str:
        return self.message


# A caller's value is echoed in an error (message or metadata) at most this long: gRPC clients refuse
# trailers over 8 KiB by default, and a status that grows with the caller's input would hit that.
MAX_ECHO_CHARS = 80


def clip(value: str, limit: int = MAX_ECHO_CHARS) -> str:
    """A value cut to at most `limit` characters, an ellipsis marking the cut (unquoted: for ErrorInfo
    metadata and the transport's own caps)."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def echo(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """A caller's value, quoted and cut to `limit` characters, saying how long it really was."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:limit]!r}... ({len(text)} characters)"


def invalid(reason: str, message: str, violations: Iterable[FieldViolation] = (), **metadata: object) -> RouterError:
    """An INVALID_INPUT error; `metadata` lands in ErrorInfo.metadata (values as strings)."""
    if KINDS.get(reason) is not ErrorKind.INVALID_INPUT:
        raise ValueError(f"{reason!r} is not an invalid-input reason")
    return RouterError(reason, message, tuple(violations), metadata={k: str(v) for k, v in metadata.items()})
