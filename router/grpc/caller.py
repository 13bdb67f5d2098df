"""Who is calling (router/core/auth.py): an API key in `authorization: Bearer`, or a client certificate's
names, and the tenant in `x-tenant-id`; the caller may use the model its request names. The interceptor
authenticates each call; its handler reads the caller back (`current_caller`, `call_context`)."""

from __future__ import annotations

import time
from contextvars import ContextVar

import structlog

from router.core.auth import NOBODY, Authenticator, Caller
from router.core.services.types import CallContext
from router.grpc.converters import criticality_from_pb
from router.grpc.malformed import Malformed

AUTHORIZATION_KEY = "authorization"
TENANT_KEY = "x-tenant-id"

_caller: ContextVar[Caller | None] = ContextVar("caller", default=None)


def set_caller(caller: Caller) -> None:
    """The call's authenticated caller, for the handler's duration (the request interceptor sets it)."""
    _caller.set(caller)


def current_caller() -> Caller:
    """The call's caller; a handler reached without the interceptor is nobody (no models, no internals)."""
    return _caller.get() or Caller(NOBODY, "")


def call_context(context, request=None) -> CallContext:
    """The caller's tenant (authenticated by the interceptor) and deadline, from a grpc.aio context, and
    the criticality the request asks for, capped at its principal's."""
    remaining = context.time_remaining()
    caller = current_caller()
    return CallContext(
        tenant=caller.tenant,
        deadline=None if remaining is None else time.monotonic() + remaining,
        criticality=caller.criticality(criticality_from_pb(getattr(request, "criticality", 0))),
    )


def model_of(request) -> str:
    """The model a request names: `model`, or GetModel's `name`."""
    return getattr(request, "model", "") or getattr(request, "name", "")


def authenticate(auth: Authenticator, request, context, metadata: dict) -> None:
    """Set the call's caller (`set_caller`) and bind its tenant and principal to the log context.
    `request` is None for a stream of requests (its handler checks the model each part names). Raises
    RouterError INVALID_ARGUMENT (a request that did not parse), UNAUTHENTICATED or PERMISSION_DENIED."""
    if isinstance(request, Malformed):  # there is no request to speak of
        raise request.error()
    scheme, _, key = metadata.get(AUTHORIZATION_KEY, "").partition(" ")
    names: list[str] = []
    if auth.enabled:
        peer = context.auth_context() or {}
        for field in ("x509_common_name", "x509_subject_alternative_name"):
            names += [value.decode(errors="replace") for value in peer.get(field, ())]
    caller = auth.authenticate(
        key.strip() if scheme.lower() == "bearer" else None, names, metadata.get(TENANT_KEY) or None
    )
    model = model_of(request) if request is not None else ""
    if model:
        caller.check_model(model)
    set_caller(caller)
    structlog.contextvars.bind_contextvars(tenant=caller.tenant, principal=caller.principal.name)
