"""Spans exported from a process of their own, so that OTLP encoding never holds the router's interpreter lock.

The OpenTelemetry SDK records spans in the router (that part must run where the work runs), but encoding
them to OTLP protobuf costs more in Python than recording them, and its export thread shares the
interpreter lock with the event loop that serves every call. So `HandOff`, the router's only span
processor, only keeps each ended span; a thread turns them into plain tuples every `interval_s` (0.2 s)
and writes them, marshalled, to this module run as a child process (`python -m router.observability.span_export`),
which rebuilds each span as the SDK's own `ReadableSpan` and hands it to the SDK's `BatchSpanProcessor`
with the OTLP exporter (`otlp.otlp_exporter`): its `OTEL_BSP_*` settings, retries and timeouts apply
unchanged.

Bounded like the SDK's own processor: at most `OTEL_BSP_MAX_QUEUE_SIZE` spans (2,048) wait for the
hand-off; further ones are dropped, logged and counted (`modelrouter_spans_dropped_total`). If the child
dies, spans are dropped and counted, never the router.
On shutdown the spans still waiting are handed off and the child exports them before it exits; it also
exits when the router is killed (its input closes). The pipe carries marshal data (plain values only:
nothing in it can run code) between two processes of the same program.
"""

from __future__ import annotations

import collections
import contextlib
import marshal
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import structlog
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from router.observability import metrics

log = structlog.get_logger("modelrouter.tracing")

_LENGTH = struct.Struct("<I")
_SHUTDOWN_GRACE_S = 5.0


def _context(context: SpanContext) -> tuple:
    return (
        context.trace_id,
        context.span_id,
        int(context.trace_flags),
        context.is_remote,
        context.trace_state.to_header() if context.trace_state else "",
    )


def _record(span: ReadableSpan) -> tuple:
    """One ended span as plain values (marshal carries them; the child rebuilds the span)."""
    scope = span.instrumentation_scope
    return (
        span.name,
        _context(span.context),
        _context(span.parent) if span.parent is not None else None,
        span.kind.value,
        span.start_time,
        span.end_time,
        dict(span.attributes or {}),
        [(event.name, event.timestamp, dict(event.attributes or {})) for event in span.events] if span.events else (),
        [(_context(link.context), dict(link.attributes or {})) for link in span.links] if span.links else (),
        (span.status.status_code.value, span.status.description),
        (scope.name, scope.version, scope.schema_url) if scope is not None else None,
    )


def _span_context(values: tuple) -> SpanContext:
    trace_id, span_id, flags, is_remote, state = values
    return SpanContext(
        trace_id, span_id, is_remote, TraceFlags(flags), TraceState.from_header([state]) if state else None
    )


def _span(record: tuple, resource: Resource) -> ReadableSpan:
    name, context, parent, kind, start, end, attributes, events, links, status, scope = record
    return ReadableSpan(
        name,
        context=_span_context(context),
        parent=_span_context(parent) if parent is not None else None,
        resource=resource,
        attributes=attributes,
        events=[Event(event_name, attrs, timestamp) for event_name, timestamp, attrs in events],
        links=[Link(_span_context(linked), attrs) for linked, attrs in links],
        kind=SpanKind(kind),
        status=Status(StatusCode(status[0]), status[1]),
        start_time=start,
        end_time=end,
        instrumentation_scope=InstrumentationScope(*scope) if scope is not None else None,
    )


def _write(stream, value) -> None:
    data = marshal.dumps(value)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _read(stream):
    """The next value, or None at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    data = stream.read(_LENGTH.unpack(header)[0])
    return marshal.loads(data)


class HandOff(SpanProcessor):
    """The router's span processor: keeps ended, sampled spans and hands them to the exporting child."""

    def __init__(self, resource: Resource, interval_s: float = 0.2, max_queue: int | None = None) -> None:
        self._max_queue = max_queue or int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", "2048"))
        self._interval_s = interval_s
        self._pending: collections.deque[ReadableSpan] = collections.deque()
        self._dropped = 0
        self._dropped_logged_at = 0.0
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE)
        self._broken = False
        self._send(("resource", dict(resource.attributes), resource.schema_url))
        self._thread = threading.Thread(target=self._run, name="span-hand-off", daemon=True)
        self._thread.start()

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        if self._broken:
            metrics.SPANS_DROPPED.labels("exporter_gone").inc()
            return
        if len(self._pending) >= self._max_queue:
            self._dropped += 1
            metrics.SPANS_DROPPED.labels("queue_full").inc()
            return
        self._pending.append(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Hands every ended span to the child (which exports on its own schedule)."""
        self._hand_off()
        return not self._broken

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join()
        self._hand_off()
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):  # a dead child's pipe
                self._process.stdin.close()
        timeout_s = float(os.environ.get("OTEL_BSP_EXPORT_TIMEOUT", "30000")) / 1000 + _SHUTDOWN_GRACE_S
        try:
            self._process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("tracing.export_process_stuck", waited_s=timeout_s)
            self._process.kill()
            self._process.wait()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._hand_off()

    def _hand_off(self) -> None:
        records = []
        while self._pending and len(records) < self._max_queue:
            records.append(_record(self._pending.popleft()))
        if records:
            self._send(("spans", records))
        if self._dropped:
            now = time.monotonic()
            if now - self._dropped_logged_at > 10:
                log.warning("tracing.spans_dropped", spans=self._dropped, queue=self._max_queue)
                self._dropped, self._dropped_logged_at = 0, now

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            if self._broken:
                return
            try:
                _write(self._process.stdin, message)
            except (OSError, ValueError) as error:  # the child is gone: tracing stops, serving does not
                self._broken = True
                lost = len(self._pending) + (len(message[1]) if message[0] == "spans" else 0)
                metrics.SPANS_DROPPED.labels("exporter_gone").inc(lost)
                self._pending.clear()
                log.error("tracing.export_process_gone", error=str(error), code=self._process.poll())


def main() -> None:
    """The child: rebuild spans from the router's hand-offs and export them with the SDK's batch processor."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from router.observability.otlp import otlp_exporter

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the router says when to stop
    stream = sys.stdin.buffer
    header = _read(stream)
    if header is None:
        return
    _, attributes, schema_url = header
    resource = Resource(attributes, schema_url)
    processor = BatchSpanProcessor(otlp_exporter())
    while (message := _read(stream)) is not None:
        for record in message[1]:
            processor.on_end(_span(record, resource))
    processor.shutdown()  # exports what is left


if __name__ == "__main__":
    main()
