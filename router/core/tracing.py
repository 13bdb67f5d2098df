"""The core's spans (OpenTelemetry API only; router/telemetry.py decides whether they go anywhere).

A request's spans are children of its RPC's server span: `tokenize`, and `queue` (from the request's
arrival at its model's scheduler to its first batch leaving). A batch serves several requests, so it
cannot be the child of all of them: a `batch` span is the child of the request that anchored it (its
first sequence's request) and carries a span link to every request it serves, each link saying how
many of that request's sequences the batch holds. In a trace viewer, a request's own trace shows its
batches when it anchored them; the others are one click away through the links (Jaeger: "references",
Tempo: "links"). The adapter's Triton call spans are children of the batch span, and Triton's own spans
children of those (the W3C `traceparent` goes to Triton in the call's gRPC metadata).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext

tracer = trace.get_tracer("modelrouter")


def current() -> SpanContext | None:
    """The span context of the code running now (a request's server span), if it is sampled: an unsampled
    request makes no further span at all, so sampling cuts tracing's cost, not only its volume."""
    context = trace.get_current_span().get_span_context()
    return context if context.is_valid and context.trace_flags.sampled else None


def child(name: str) -> contextlib.AbstractContextManager:
    """A child span of the current one, current while it runs; nothing at all when nothing is traced."""
    if current() is None:
        return contextlib.nullcontext(trace.INVALID_SPAN)
    return tracer.start_as_current_span(name)


def wall_ns() -> int:
    return time.time_ns()


def queue_span(parent: SpanContext | None, arrived_ns: int, left_ns: int | None, model: str) -> None:
    """Record, after the fact, how long a request's sequences waited before its first batch left."""
    if parent is None or left_ns is None:
        return
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    span = tracer.start_span("modelrouter.queue", context=context, start_time=arrived_ns)
    span.set_attribute("modelrouter.model", model)
    span.end(end_time=left_ns)


@contextlib.contextmanager
def batch_span(
    model: str, version: str, served: Sequence[SpanContext | None], rows: int, real: int, padded: int
) -> Iterator[trace.Span]:
    """The span of one batch, current while it runs: child of its anchor request, linked to every request."""
    contexts = {(c.trace_id, c.span_id): c for c in served if c is not None}  # SpanContext is not hashable
    if not contexts:
        yield trace.INVALID_SPAN
        return
    counts = Counter((c.trace_id, c.span_id) for c in served if c is not None)
    anchor = next(iter(contexts.values()))
    links = [Link(contexts[key], {"modelrouter.sequences": count}) for key, count in counts.items()]
    attributes = {
        "modelrouter.model": model,
        "modelrouter.model_version": version,
        "modelrouter.rows": rows,
        "modelrouter.real_tokens": real,
        "modelrouter.padded_tokens": padded,
        "modelrouter.requests": len(counts),
    }
    context = trace.set_span_in_context(NonRecordingSpan(anchor))
    with tracer.start_as_current_span("modelrouter.batch", context=context, links=links, attributes=attributes) as span:
        yield span
