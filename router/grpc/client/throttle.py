"""Adaptive throttling for the router's callers, on the client side (Google SRE, "Handling Overload").

An overloaded router refuses work at once (RESOURCE_EXHAUSTED with RetryInfo), but each refusal still
costs a request on the wire, a status from the router and an error in the caller, on CPUs that also
serve the calls the router admits. A caller that keeps sending at several times what the router can
take makes it spend more and more of itself on saying no. With `ThrottlingInterceptor` on its channel, a
caller keeps, over the last `window_s` seconds, how many calls it attempted (`requests`) and how many the
router accepted (`accepts`), and refuses a new call itself, before sending it, with probability

    max(0, (requests - k * accepts) / (requests + 1))

Nothing is refused while the router accepts at least 1/k of the calls; past that the caller sends about
k times what the router accepts, and a refusal costs it a random number. Calls refused here count as
requests, so once the router accepts again, accepts catch up and the throttle opens within a window.

A call counts once its outcome is known: when the router answers, or at once when refused here. Calls
still in flight do not count (the book counts a request when it is made): counted at the start, a
caller's first burst would be refused for want of answers (after 8 calls sent at once, none answered
yet, the next would be refused with probability 8/9).

The outcomes of an overloaded or unreachable server count as not accepted: RESOURCE_EXHAUSTED,
UNAVAILABLE and DEADLINE_EXCEEDED. Any other outcome, errors included, means the router took the
call. A call refused here fails with RESOURCE_EXHAUSTED and a google.rpc `ErrorInfo`
(reason `CLIENT_THROTTLED`, domain `modelrouter.v1`), so a caller's handling of the router's own
refusals applies unchanged; it carries no RetryInfo, since no server said when to come back.

Written here because no maintained Python package offers it: Apache Beam's `AdaptiveThrottler` is
internal to Beam's IO connectors, and gRPC-Go's throttler is internal to its RLS balancer. The admission
bench (bench/admission.py) measures what it changes.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from router.core import errors
from router.grpc.status import DOMAIN

REASON = errors.CLIENT_THROTTLED
NOT_ACCEPTED = frozenset(
    {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
"""The outcomes of an overloaded server: a call that ends with one of them was not accepted."""


class AdaptiveThrottle:
    """Requests and accepts over a sliding window of `bins` equal time bins. Safe to share between
    threads and channels (one per router a process calls is the intended use).

    `k`: how many times the accepted calls a caller may send (2, as the SRE book and gRPC-Go suggest; lower
    is more aggressive, and must stay well above the router's `overload_ratio`, 1.3: at 1.5 the router's
    overload rule rarely fired and admitted calls waited up to 1.1 s at p50, the README says more).
    `window_s`: how much history counts (30 s, as in gRPC-Go)."""

    def __init__(
        self,
        k: float = 2.0,
        window_s: float = 30.0,
        bins: int = 30,
        *,
        clock: Callable[[], float] = time.monotonic,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1 (a caller would send fewer calls than are accepted), not {k}")
        if window_s <= 0 or bins < 1:
            raise ValueError(f"window_s must be positive and bins at least 1, not {window_s} and {bins}")
        self.k = k
        self._bin_s = window_s / bins
        self._clock = clock
        self._uniform = uniform
        self._lock = threading.Lock()
        self._requests = [0] * bins
        self._accepts = [0] * bins
        self._total_requests = 0
        self._total_accepts = 0
        self._newest = int(clock() / self._bin_s)  # absolute index of the newest bin

    def admit(self) -> bool:
        """Whether to send a call; a call refused here counts at once, as a request not accepted."""
        with self._lock:
            current = self._roll()
            probability = self._probability()
            if probability <= 0 or self._uniform() >= probability:
                return True
            self._requests[current] += 1
            self._total_requests += 1
            return False

    def record(self, accepted: bool) -> None:
        """Counts the outcome of a call that was sent: accepted by the router or not."""
        with self._lock:
            current = self._roll()
            self._requests[current] += 1
            self._total_requests += 1
            if accepted:
                self._accepts[current] += 1
                self._total_accepts += 1

    def counts(self) -> tuple[int, int]:
        """Requests and accepts in the window now."""
        with self._lock:
            self._roll()
            return self._total_requests, self._total_accepts

    def rejection_probability(self) -> float:
        with self._lock:
            self._roll()
            return self._probability()

    def _probability(self) -> float:
        return max(0.0, (self._total_requests - self.k * self._total_accepts) / (self._total_requests + 1))

    def _roll(self) -> int:
        """Empties the bins that fell out of the window since the last call; the current bin's slot."""
        now = int(self._clock() / self._bin_s)
        size = len(self._requests)
        for absolute in range(self._newest + 1, min(now, self._newest + size) + 1):
            slot = absolute % size
            self._total_requests -= self._requests[slot]
            self._total_accepts -= self._accepts[slot]
            self._requests[slot] = self._accepts[slot] = 0
        self._newest = max(now, self._newest)
        return self._newest % size


def throttled_error(requests: int, accepts: int) -> grpc.aio.AioRpcError:
    """The error of a call refused by the caller's throttle, shaped like a router refusal."""
    message = f"refused by the caller's adaptive throttle: the router accepted {accepts} of the last {requests} calls"
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=REASON, domain=DOMAIN))
    trailing = grpc.aio.Metadata(*rpc_status.to_status(status).trailing_metadata)
    return grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), trailing, details=message)


class ThrottlingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Adaptive throttling for a grpc.aio channel's unary calls (Embed, Rerank, ...):

        channel = grpc.aio.insecure_channel(target, interceptors=[ThrottlingInterceptor()])

    Streamed calls (Generate) pass untouched."""

    def __init__(self, throttle: AdaptiveThrottle | None = None) -> None:
        self.throttle = throttle if throttle is not None else AdaptiveThrottle()

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        if not self.throttle.admit():
            raise throttled_error(*self.throttle.counts())
        call = await continuation(client_call_details, request)
        self.throttle.record(await call.code() not in NOT_ACCEPTED)
        return call
