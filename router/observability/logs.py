"""structlog set-up: context variables first, so every line carries the request's identity."""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from typing import TextIO

import structlog
from opentelemetry import trace

REQUEST_ID_KEY = "x-request-id"
_ID_PREFIX = os.urandom(8).hex()
_ID_NUMBERS = itertools.count()


def new_request_id() -> str:
    """A request id for a call that brought none: this process's random 64-bit prefix and a counter (unique
    across a fleet in practice; a random id per call costs a system call)."""
    return f"{_ID_PREFIX}{next(_ID_NUMBERS):08x}"


def bind_call(request_id: str | None, method: str, tenant: str) -> float:
    """Bind a call's log context (request id, method, tenant, the trace ids of its server span); return
    when the call started (time.perf_counter())."""
    span = trace.get_current_span().get_span_context()
    ids = {"trace_id": format(span.trace_id, "032x"), "span_id": format(span.span_id, "016x")} if span.is_valid else {}
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=request_id or new_request_id(), method=method, tenant=tenant, **ids
    )
    return time.perf_counter()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None, fields: dict | None = None) -> None:
    """`fmt`: `json`, `console`, or `auto` (JSON unless the stream is a terminal). `stream`: where lines go
    (standard output unless given; a tool whose own output is on standard output logs to standard error).
    `fields`: added to every line (a worker process's index)."""
    if fmt == "auto":
        fmt = "console" if (stream or sys.stdout).isatty() else "json"
    rendering = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer()]
    )
    # The list is changed in place: loggers cached on first use keep the list they saw, so a second
    # configure (an in-process router started again, a test capturing lines) still reaches them.
    processors = structlog.get_config()["processors"]
    processors[:] = [
        structlog.contextvars.merge_contextvars,
        *([_adding(fields)] if fields else []),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        *rendering,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line (message and newline together): worker processes share standard output, and
        # a pipe keeps writes that small whole, where print() writes the newline apart and lines can run together.
        logger_factory=structlog.WriteLoggerFactory(stream),  # None: standard output as each logger starts
        cache_logger_on_first_use=True,
    )


def _adding(fields: dict):
    def add(logger, method: str, event: dict) -> dict:
        event.update(fields)
        return event

    return add
