"""How fast a model gets through work, and how fast work comes, measured as it runs: what admission's
estimates and its overload signal rest on."""

from __future__ import annotations

from collections import deque


class DrainRate:
    """Tokens per second the model completes while it is busy, smoothed over spans of busy time.

    Only busy time counts, so a lightly loaded model is not mistaken for a slow one. Better still, time
    during which work was waiting (the model saturated) is measured on its own: that is the rate a queue
    drains at, while a lightly loaded model's busy time is mostly one small batch's fixed overheads.
    `rate` is the saturated rate once there is one, else the busy rate. Samples span at least
    `min_span_s`: completions can arrive in clumps (Triton may hand several queued batches to one model
    execution and answer them together), and a rate over one clump's gap would be nonsense.
    """

    def __init__(self, smoothing: float = 0.3, min_span_s: float = 0.5) -> None:
        self.smoothing = smoothing
        self.min_span_s = min_span_s
        self.busy_rate: float | None = None
        self.saturated_rate: float | None = None
        self._busy_since: float | None = None
        self._busy_s = 0.0
        self._tokens = 0
        self._saturated_since: float | None = None
        self._saturated_s = 0.0
        self._saturated_tokens = 0

    @property
    def rate(self) -> float | None:
        return self.saturated_rate or self.busy_rate

    @rate.setter
    def rate(self, value: float | None) -> None:
        """Set both (tests, and a rate known in advance)."""
        self.busy_rate = self.saturated_rate = value

    def _smooth(self, current: float | None, sample: float) -> float:
        return sample if current is None else (1 - self.smoothing) * current + self.smoothing * sample

    def started(self, now: float) -> None:
        """A batch left; call before counting it in flight."""
        if self._busy_since is None:
            self._busy_since = now

    def finished(self, tokens: int, now: float, still_inflight: int, waiting: bool = False) -> None:
        """A batch of `tokens` came back (0: it failed), leaving `still_inflight` batches out; `waiting`:
        work is queued, so the model stays busy until the next completion.

        A failed batch's time is not counted at all: a shard that refuses at once, or one that hangs until
        it is declared dead, says nothing about how fast the model computes, and counting that time with no
        tokens would make the drain rate collapse, so admission would refuse everything for a while after."""
        if tokens == 0:
            self._saturated_since = now if waiting else None
            if self._busy_since is not None:
                self._busy_since = now if still_inflight else None
            return
        if self._saturated_since is not None:
            self._saturated_s += now - self._saturated_since
            self._saturated_tokens += tokens
            if self._saturated_s >= self.min_span_s and self._saturated_tokens:
                sample = self._saturated_tokens / self._saturated_s
                self.saturated_rate = self._smooth(self.saturated_rate, sample)
                self._saturated_s, self._saturated_tokens = 0.0, 0
        self._saturated_since = now if waiting else None
        self._tokens += tokens
        span = self._busy_s + (now - self._busy_since if self._busy_since is not None else 0.0)
        if still_inflight == 0 and self._busy_since is not None:
            self._busy_s, self._busy_since = span, None
        if span >= self.min_span_s and self._tokens:
            self.busy_rate = self._smooth(self.busy_rate, self._tokens / span)
            self._tokens, self._busy_s = 0, 0.0
            if self._busy_since is not None:
                self._busy_since = now


class Calibration:
    """How far off the drain-rate estimates run: the time admitted requests took beyond their estimate,
    smoothed. A request's estimate counts the tokens ahead of it and its own; what it does not count is
    fixed per request and per batch (the gRPC hops, padding, Triton's own queue), so the error is added,
    not multiplied. (A factor, tried before, was learned from lone small requests, whose time is mostly
    those overheads, and then multiplied the estimate of a long queue by 3: it refused at 0.5x load.)"""

    def __init__(self, smoothing: float = 0.1) -> None:
        self.smoothing = smoothing
        self.offset_s = 0.0

    def adjust(self, estimate_s: float) -> float:
        """The estimate, corrected."""
        return estimate_s + self.offset_s

    def observe(self, estimate_s: float, actual_s: float) -> None:
        error = max(0.0, actual_s - estimate_s)
        self.offset_s += self.smoothing * (error - self.offset_s)


class ArrivalRate:
    """Requests arriving per second, over a sliding window."""

    def __init__(self, window_s: float = 3.0, buckets: int = 6) -> None:
        self.bucket_s = window_s / buckets
        self.window_s = window_s
        self._buckets: deque[list[float]] = deque()  # [start, arrived]

    def arrived(self, now: float) -> None:
        self._trim(now)
        if not self._buckets or self._buckets[-1][0] + self.bucket_s <= now:
            self._buckets.append([now, 0])
        self._buckets[-1][1] += 1

    def count(self, now: float) -> int:
        """Arrivals within the window."""
        self._trim(now)
        return int(sum(b[1] for b in self._buckets))

    def _trim(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()
