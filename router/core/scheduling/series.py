"""A model scheduler's metric series, looked up once (a label lookup costs more than the update): its
batches, their rows and tokens, refusals by reason, and its share of the model's gauges."""

from __future__ import annotations

from collections.abc import Callable

from router.core.errors import RouterError
from router.core.scheduling import admission
from router.observability import metrics


class ModelSeries:
    def __init__(self, model: str) -> None:
        self.model = model
        self._batches = metrics.BATCHES.labels(model)
        self._batch_rows = metrics.BATCH_ROWS.labels(model)
        self._real_tokens = metrics.REAL_TOKENS.labels(model)
        self._padded_tokens = metrics.PADDED_TOKENS.labels(model)
        self._queued_tokens = metrics.QUEUED_TOKENS.labels(model)
        self._inflight = metrics.INFLIGHT_BATCHES.labels(model)
        self._shed = {reason: metrics.SHED.labels(model, reason) for reason in admission.REASONS}
        self._reported = (0, 0)
        """The queued tokens and batches in flight this scheduler last added to its model's gauges."""

    def watch(self, drain_rate: Callable[[], float], backlog_s: Callable[[], float], slots: Callable[[], int]) -> None:
        """The autoscaling gauges, read from the scheduler when scraped (nothing per call). The model's
        newest scheduler owns them."""
        metrics.DRAIN_TOKENS.labels(self.model).set_function(drain_rate)
        metrics.BACKLOG_SECONDS.labels(self.model).set_function(backlog_s)
        metrics.BATCH_SLOTS.labels(self.model).set_function(slots)

    def refused(self, error: RouterError) -> RouterError:
        """Count a refusal by its reason, and hand the error back for raising."""
        shed = self._shed.get(error.reason)
        if shed is not None:
            shed.inc()
        return error

    def batch(self, rows: int, tokens: int, padded: int) -> None:
        self._batches.inc()
        self._batch_rows.observe(rows)
        self._real_tokens.inc(tokens)
        self._padded_tokens.inc(padded)

    def report(self, queued: int, inflight: int) -> None:
        """Add this scheduler's change to its model's gauges: a model's are the sum over its schedulers (an
        older version a caller names has its own, and a rollout runs two for a while)."""
        self._queued_tokens.inc(queued - self._reported[0])
        self._inflight.inc(inflight - self._reported[1])
        self._reported = (queued, inflight)
