"""The cap on calls inside the router at once (`max_concurrent_rpcs`): a call past it is refused before
its request is looked at, with a retry delay that spreads refused callers out (retry_hints.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from router.core import errors
from router.core.errors import RouterError
from router.grpc.retry_hints import Appointments, MeanDuration


class CallCap:
    def __init__(self, max_calls: int) -> None:
        self.max_calls = max_calls
        self.active = 0
        """Calls inside the router now (every method of its service)."""
        self._call_s = MeanDuration()
        self._appointments = Appointments()
        """Refused callers are told to come back one after another, at the rate calls end."""
        self.last_arrival = 0.0
        """When the latest call came in (time.monotonic()): a stopping server waits for a quiet moment."""

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one place for the call, or raise TOO_MANY_REQUESTS."""
        now = self.last_arrival = time.monotonic()
        if self.active >= self.max_calls:
            # A slot frees about every mean call time / slots: the next refused caller's turn is then.
            turn = self._call_s.value / self.max_calls
            raise RouterError(
                errors.TOO_MANY_REQUESTS,
                f"the router has {self.active} calls in flight, its limit",
                retry_after_s=self._appointments.delay(now, turn, turn),
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._call_s.add(time.monotonic() - now)
