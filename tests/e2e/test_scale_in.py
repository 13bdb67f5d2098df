"""Scale-in loses nothing: an autoscaler ends a router with SIGTERM while callers keep calling. Every call
that reaches it either completes or is refused with UNAVAILABLE and a RetryInfo delay before any work;
a caller that heeds the delay finds the router gone afterwards (nothing listening), never a call cut off
(CANCELLED, or UNAVAILABLE "Cancelling all calls"). Callers here heed their retry delay, as the router's
own client does; one that ignores it may still meet the instant grpc stops taking calls."""

from __future__ import annotations

import collections
import signal
import threading
import time

import grpc
import pytest

from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from tests.helpers import EMBED_MODEL, details_of
from tests.processes import Served

CALLERS = 8
TEXTS = 8


class Caller(threading.Thread):
    """Sends 8-text Embed calls one after another until `until`, or until the router is gone; waits as
    long as a refusal's RetryInfo says before the next."""

    def __init__(self, target: str, index: int, until: float) -> None:
        super().__init__(daemon=True)
        self.target, self.index, self.until = target, index, until
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.ModelRouterServiceStub(channel)
            texts = [f"caller {self.index} text {i} " * 12 for i in range(TEXTS)]
            while time.monotonic() < self.until:
                try:
                    reply = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=texts), timeout=60)
                    assert len(reply.embeddings) == TEXTS
                    self.outcomes["ok"] += 1
                except grpc.RpcError as error:
                    if not self._refused(error):
                        return

    def _refused(self, error: grpc.RpcError) -> bool:
        """Whether to call again: after a refusal's delay; not once nothing listens."""
        if error.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in (error.details() or ""):
            self.outcomes["nothing listening"] += 1
            return False
        details = details_of(error) if error.code() == grpc.StatusCode.UNAVAILABLE else None
        if details is None or "retry" not in details.kinds:
            self.unexpected.append(f"{error.code().name}: {error.details()}")
            return False
        self.outcomes[f"refused ({details.info.reason})"] += 1
        time.sleep(details.retry.retry_delay.ToTimedelta().total_seconds())
        return True


@pytest.fixture
def served(triton):
    server = Served([triton.grpc_address])
    try:
        yield server.wait_ready()
    finally:
        server.kill()


def test_sigterm_while_callers_call_loses_no_call(served):
    until = time.monotonic() + 12
    callers = [Caller(served.target, i, until) for i in range(CALLERS)]
    for caller in callers:
        caller.start()
    time.sleep(3)
    done_before = sum(caller.outcomes["ok"] for caller in callers)
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(60) == 0
    for caller in callers:
        caller.join(30)
    outcomes = sum((caller.outcomes for caller in callers), collections.Counter())
    unexpected = [failure for caller in callers for failure in caller.unexpected]
    assert not unexpected, f"calls cut off by the shutdown: {unexpected}; the rest: {dict(outcomes)}"
    assert done_before > 0 and outcomes["refused (SHUTTING_DOWN)"] > 0, dict(outcomes)
    (draining,) = served.logs("router.draining")
    (drained,) = served.logs("router.drained")
    assert draining["requests"] > 0 and drained["finished"], (draining, drained)  # calls were in flight
