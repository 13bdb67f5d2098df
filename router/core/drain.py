"""How fast a model gets through work, measured as it runs: what admission's estimates rest on."""

from __future__ import annotations


class DrainRate:
    """Tokens per second the model completes while it is busy, smoothed over spans of busy time.

    Only busy time counts, so a lightly loaded model is not mistaken for a slow one. Samples span at
    least `min_span_s`: completions can arrive in clumps (Triton may hand several queued batches to one
    model execution and answer them together), and a rate over one clump's gap would be nonsense.
    """

    def __init__(self, smoothing: float = 0.3, min_span_s: float = 0.5) -> None:
        self.smoothing = smoothing
        self.min_span_s = min_span_s
        self.rate: float | None = None
        self._busy_since: float | None = None
        self._busy_s = 0.0
        self._tokens = 0

    def started(self, now: float) -> None:
        """A batch left; call before counting it in flight."""
        if self._busy_since is None:
            self._busy_since = now

    def finished(self, tokens: int, now: float, still_inflight: int) -> None:
        """A batch of `tokens` came back (0: it failed), leaving `still_inflight` batches out."""
        self._tokens += tokens
        span = self._busy_s + (now - self._busy_since if self._busy_since is not None else 0.0)
        if still_inflight == 0 and self._busy_since is not None:
            self._busy_s, self._busy_since = span, None
        if span >= self.min_span_s and self._tokens:
            sample = self._tokens / span
            self.rate = sample if self.rate is None else (1 - self.smoothing) * self.rate + self.smoothing * sample
            self._tokens, self._busy_s = 0, 0.0
            if self._busy_since is not None:
                self._busy_since = now


class Calibration:
    """How far off the drain-rate estimates run: the ratio of actual to estimated time of admitted
    requests, smoothed. Estimates are scaled by its mean plus one deviation, so most admitted requests
    finish within their deadline, whatever the model's per-batch overheads and packing under load."""

    def __init__(self, smoothing: float = 0.1) -> None:
        self.smoothing = smoothing
        self.mean = 1.0
        self.deviation = 0.0

    @property
    def factor(self) -> float:
        """The mean ratio, within [1, 4]. (Mean plus a deviation, tried before, refused too many
        requests that would have made it: 15% at exactly 1x load.)"""
        return min(4.0, max(1.0, self.mean))

    def observe(self, estimate_s: float, actual_s: float) -> None:
        if estimate_s <= 0:
            return
        ratio = min(10.0, actual_s / estimate_s)
        self.deviation += self.smoothing * (abs(ratio - self.mean) - self.deviation)
        self.mean += self.smoothing * (ratio - self.mean)
