"""The core's tracing (OpenTelemetry API only; router/observability/telemetry.py decides whether spans go anywhere).

Few spans per request, so that tracing costs little on the hot path: the RPC's server span (the
interceptor's) and one client span per Triton call (the adapter's). What happens in between is recorded
as attributes of the server span: the sequences and tokens its text became, how long tokenizing took, and
how long it waited in its model's queue before its first batch left. (Attributes rather than events: an
event costs a span's SDK more, and its exporter more to encode.)

A batch serves several requests, so its Triton call cannot be the child of all of them: it is the child
of the request that anchored the batch (its first sequence's request) and carries a span link to every
request it serves, each link saying how many of that request's sequences the batch holds. In a trace
viewer a request's own trace shows the calls it anchored; the others are one click away through the
links (Jaeger: "references", Tempo: "links"). Triton's own spans are children of the call's span (the
W3C `traceparent` goes to Triton in the call's gRPC metadata).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext

tracer = trace.get_tracer("modelrouter")

_BATCH = otel_context.create_key("modelrouter.batch")
"""Where a batch's links and attributes wait for the Triton call span that carries them."""


class ServerSpan:
    """A call's server span, continuing the caller's W3C `traceparent` (read from `carrier`: gRPC metadata
    or HTTP headers, lower-case keys), current while the call runs (so every span and log line of the
    call belongs to it), ended when it leaves: what the SDK's `start_as_current_span` does, for a little
    less per call (every call, sampled or not, pays it)."""

    __slots__ = ("_parent", "_span", "_token")

    def __init__(self, name: str, carrier: dict, attributes: dict) -> None:
        self._parent = propagate.extract(carrier)
        self._span = tracer.start_span(
            name, context=self._parent, kind=trace.SpanKind.SERVER, attributes=attributes, record_exception=False
        )

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span, self._parent))
        return self._span

    def __exit__(self, *exc_info) -> None:
        otel_context.detach(self._token)
        self._span.end()


def current() -> SpanContext | None:
    """The span context of the code running now (a request's server span), if it is sampled: an unsampled
    request makes no further span at all, so sampling cuts tracing's cost, not only its volume."""
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid and context.trace_flags.sampled else None


def note(**attributes: int | float | str) -> None:
    """Attributes `modelrouter.<name>` on the span running now (a request's server span), if recorded."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"modelrouter.{k}": v for k, v in attributes.items()})


def wall_ns() -> int:
    return time.time_ns()


@contextlib.contextmanager
def batch(served: Sequence[SpanContext | None], padded: int) -> Iterator[None]:
    """Make the batch's anchor request current while the batch runs, with the links and attributes that
    its Triton call's span carries (`call_links`: its padded tokens and the requests it serves; the call
    itself says its rows and tokens); nothing when none of its requests is traced."""
    contexts = {(c.trace_id, c.span_id): c for c in served if c is not None}  # SpanContext is not hashable
    if not contexts:
        yield
        return
    counts = Counter((c.trace_id, c.span_id) for c in served if c is not None)
    links = [Link(contexts[key], {"modelrouter.sequences": count}) for key, count in counts.items()]
    attributes = {"modelrouter.padded_tokens": padded, "modelrouter.requests": len(counts)}
    anchor = next(iter(contexts.values()))
    context = trace.set_span_in_context(NonRecordingSpan(anchor))
    token = otel_context.attach(otel_context.set_value(_BATCH, (links, attributes), context))
    try:
        yield
    finally:
        otel_context.detach(token)


def call_links() -> tuple[list[Link], dict]:
    """The links and attributes of the batch running now (see `batch`), for its Triton call's span."""
    found = otel_context.get_value(_BATCH)
    return found if found is not None else ([], {})
