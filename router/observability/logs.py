"""structlog set-up: context variables first, so every line carries the request's identity."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


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
