"""The callers' adaptive throttle: the SRE book's rejection probability over a sliding window, and the
interceptor that applies it before a call is sent."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from router.grpc.client.throttle import REASON, AdaptiveThrottle, ThrottlingInterceptor
from router.grpc.status import DOMAIN


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(k: float = 2.0, uniform: float = 0.5, clock: Clock | None = None) -> AdaptiveThrottle:
    return AdaptiveThrottle(k=k, window_s=10.0, bins=10, clock=clock or Clock(), uniform=lambda: uniform)


def test_nothing_is_refused_while_the_router_accepts_at_least_one_call_in_k():
    subject = throttle(uniform=0.0)  # the most refusing draw there is
    for i in range(100):
        assert subject.admit()
        subject.record(accepted=i % 2 == 0)
    assert subject.counts() == (100, 50)
    assert subject.rejection_probability() == 0.0


def test_the_probability_is_the_sre_books():
    subject = throttle()
    for _ in range(10):
        subject.record(accepted=False)
    assert subject.rejection_probability() == pytest.approx(10 / 11)
    for _ in range(3):
        subject.record(accepted=True)
    assert subject.rejection_probability() == pytest.approx((13 - 2 * 3) / 14)


def test_a_call_is_refused_when_the_draw_falls_under_the_probability_and_counts_at_once():
    refusing, admitting = throttle(uniform=0.5), throttle(uniform=0.5)
    for subject in (refusing, admitting):
        for _ in range(10):
            subject.record(accepted=False)
    for _ in range(6):
        admitting.record(accepted=True)  # probability (16 - 12) / 17 = 0.24, under the draw
    assert not refusing.admit()  # probability 10 / 11
    assert admitting.admit()
    assert refusing.counts() == (11, 0)  # a call refused here is a request not accepted
    assert admitting.counts() == (16, 6)  # a call sent counts when it ends


def test_a_first_burst_is_sent_whole_while_no_answer_has_come():
    subject = throttle(uniform=0.0)
    assert all(subject.admit() for _ in range(50))
    assert subject.counts() == (0, 0)


def test_history_leaves_the_window_bin_by_bin():
    clock = Clock()
    subject = throttle(clock=clock)
    for _ in range(4):
        subject.record(accepted=False)
    clock.now += 5
    for _ in range(6):
        subject.record(accepted=True)
    assert subject.counts() == (10, 6)
    clock.now += 6  # the first four are over 10 s old, the last six are not
    assert subject.counts() == (6, 6)
    clock.now += 100
    assert subject.counts() == (0, 0)
    assert subject.rejection_probability() == 0.0


def test_once_the_router_accepts_again_the_throttle_opens():
    clock = Clock()
    subject = throttle(uniform=0.5, clock=clock)
    for _ in range(50):
        subject.record(accepted=False)
    assert subject.rejection_probability() > 0.9
    clock.now += 11  # the refusals left the window
    for _ in range(20):
        assert subject.admit()
        subject.record(accepted=True)


def test_k_below_one_is_refused():
    with pytest.raises(ValueError, match="k must be at least 1"):
        AdaptiveThrottle(k=0.5)


class Call:
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    async def code(self) -> grpc.StatusCode:
        return self._code


@pytest.mark.parametrize(
    ("code", "accepted"),
    [
        (grpc.StatusCode.OK, True),
        (grpc.StatusCode.INVALID_ARGUMENT, True),  # the router took the call and answered
        (grpc.StatusCode.RESOURCE_EXHAUSTED, False),
        (grpc.StatusCode.UNAVAILABLE, False),
        (grpc.StatusCode.DEADLINE_EXCEEDED, False),
    ],
)
async def test_the_interceptor_counts_what_the_router_accepted(code, accepted):
    interceptor = ThrottlingInterceptor(throttle())

    async def continuation(details, request):
        return Call(code)

    call = await interceptor.intercept_unary_unary(continuation, None, "request")
    assert await call.code() is code
    assert interceptor.throttle.counts() == (1, int(accepted))


async def test_a_throttled_call_is_never_sent_and_fails_like_a_router_refusal():
    draw = [0.99]
    clock = Clock()
    interceptor = ThrottlingInterceptor(AdaptiveThrottle(window_s=10.0, bins=10, clock=clock, uniform=lambda: draw[0]))
    sent = []

    async def continuation(details, request):
        sent.append(request)
        return Call(grpc.StatusCode.RESOURCE_EXHAUSTED)

    for i in range(3):  # refused by the router, 3 of 3 (the draw admits each: probabilities 0, 1/2, 2/3)
        await interceptor.intercept_unary_unary(continuation, None, i)
    draw[0] = 0.5
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await interceptor.intercept_unary_unary(continuation, None, 3)  # probability 3 / 4 > 0.5
    assert sent == [0, 1, 2]
    error = raised.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_details_pb2.ErrorInfo()
    assert rpc_status.from_call(error).details[0].Unpack(info)
    assert (info.reason, info.domain) == (REASON, DOMAIN)
