"""Retry delays that spread refused callers out instead of bringing them back together.

A burst of callers refused at the same moment and all told "retry in 100 ms" come back together, and
most are refused again: a client with gRPC's retry policy (five attempts at most) then gives up while
the server still had room for it a moment later. `Appointments` hands out retry times like a queue
hands out places: each refusal gets the next free time, one `spacing` (the time one caller's turn
takes) after the one before, never earlier than `earliest`. Once the load has passed, the next free
time lies in the past and delays are back to `earliest`.
"""

from __future__ import annotations


class Appointments:
    def __init__(self, max_delay_s: float = 30.0) -> None:
        self.max_delay_s = max_delay_s
        self._next = 0.0

    def delay(self, now: float, earliest_s: float, spacing_s: float) -> float:
        """Seconds from `now` until this refused caller's turn to try again."""
        at = min(max(now + earliest_s, self._next), now + self.max_delay_s)
        self._next = at + spacing_s
        return at - now


class MeanDuration:
    """An exponentially weighted mean of how long something takes (the calls the router holds)."""

    def __init__(self, initial_s: float = 0.1, weight: float = 0.2) -> None:
        self.value = initial_s
        self.weight = weight

    def add(self, seconds: float) -> None:
        self.value += self.weight * (seconds - self.value)
