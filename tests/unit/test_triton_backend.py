"""The Triton adapter's shard choice and retries, with fake clients in place of tritonclient's (no network)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from adapters.triton.backend import TritonBackend
from adapters.triton.fleet import Target
from router.core.errors import ErrorKind, RouterError
from router.core.routing import RetryBudget
from router.core.tokenize import Window
from tests.unit.test_scheduler import contract

ROWS = [Window(np.ones(4, dtype=np.int64), None, 0, 4)]


class Result:
    def __init__(self, rows: int) -> None:
        self.rows = rows

    def as_numpy(self, name):
        return np.ones((self.rows, 4), dtype=np.float32)


class FakeClient:
    """Answers, or fails with the given Triton status, and records each call's time left."""

    def __init__(self, fail: str | None = None, message: str = "down", gate: asyncio.Event | None = None) -> None:
        self.fail, self.message, self.gate = fail, message, gate
        self.timeouts: list = []

    async def infer(self, model, tensors, **options):  # tritonclient's keywords: outputs, timeout, client_timeout
        self.timeouts.append(options["client_timeout"])
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise InferenceServerException(self.message, status=self.fail)
        return Result(tensors[0].shape()[0])

    async def close(self) -> None: ...


def backend_with(clients: dict[str, FakeClient], **options) -> TritonBackend:
    backend = TritonBackend(list(clients), **options)
    backend.shards.update(clients)
    for shard in backend.shards.shards.values():
        shard.ready, shard.models = True, {contract().name: frozenset({contract().version})}
    backend.fleet.clients.update(clients)
    return backend


async def test_a_batch_failing_on_a_dead_shard_runs_on_another_and_the_dead_one_is_ejected():
    dead, alive = FakeClient("StatusCode.UNAVAILABLE"), FakeClient()
    backend = backend_with({"127.0.0.1:1": dead, "127.0.0.1:2": alive})
    for _ in range(50):  # the first pick is a coin toss between two unmeasured shards: 50 calls settle it
        out = await backend.infer(contract(), ROWS, timeout_s=10.0)
        assert out.shape == (1, 4)
    assert len(dead.timeouts) == 1  # tried once, then ejected
    assert len(alive.timeouts) == 50
    assert not backend.shards.shards["127.0.0.1:1"].usable(0.0)


async def test_unavailable_on_one_shard_is_retried_within_the_deadline_left():
    client = FakeClient("StatusCode.UNAVAILABLE")
    backend = backend_with({"127.0.0.1:1": client}, retries=2, backoff_s=0.01)
    with pytest.raises(RouterError) as caught:
        await backend.infer(contract(), ROWS, timeout_s=10.0)
    assert caught.value.kind is ErrorKind.BACKEND_UNAVAILABLE and caught.value.retry_after_s
    assert len(client.timeouts) == 3  # the first try and two retries
    assert client.timeouts[0] <= 10.0 and client.timeouts[2] < client.timeouts[1] < client.timeouts[0]


async def test_no_retry_that_would_outlive_the_deadline():
    client = FakeClient("StatusCode.UNAVAILABLE")
    backend = backend_with({"127.0.0.1:1": client}, backoff_s=1.0)
    with pytest.raises(RouterError):
        await backend.infer(contract(), ROWS, timeout_s=0.5)
    assert len(client.timeouts) == 1


async def test_a_failure_of_the_batch_itself_is_not_retried():
    first, second = FakeClient("StatusCode.INTERNAL", "onnxruntime failed"), FakeClient()
    backend = backend_with({"127.0.0.1:1": first, "127.0.0.1:2": second})
    backend.shards.shards["127.0.0.1:2"].ready = False  # so the first is picked
    with pytest.raises(RouterError) as caught:
        await backend.infer(contract(), ROWS, timeout_s=10.0)
    assert caught.value.kind is ErrorKind.BACKEND_FAILED
    assert len(first.timeouts) == 1 and not second.timeouts
    assert backend.shards.shards["127.0.0.1:1"].usable(0.0)  # not the shard's fault: not ejected


async def test_retries_stay_within_the_budget():
    clients = {f"127.0.0.1:{i}": FakeClient("StatusCode.UNAVAILABLE", "Exceeds maximum queue size") for i in (1, 2)}
    backend = backend_with(clients, retries=1, retry_budget=RetryBudget(ratio=0.0, reserve=3))
    for _ in range(10):
        with pytest.raises(RouterError) as caught:
            await backend.infer(contract(), ROWS, timeout_s=10.0)
        assert caught.value.kind is ErrorKind.OVERLOADED
    assert sum(len(c.timeouts) for c in clients.values()) == 10 + 3


async def test_a_shard_that_lost_the_model_passes_the_batch_on():
    gone = FakeClient("StatusCode.UNAVAILABLE", "Request for unknown model: 'm' is not found")
    backend = backend_with({"127.0.0.1:1": gone, "127.0.0.1:2": FakeClient()})
    backend.shards.shards["127.0.0.1:2"].ready = False
    await backend.infer(contract(), ROWS, timeout_s=10.0)  # panic choice among holders after the first
    assert len(gone.timeouts) == 1


async def test_outstanding_tokens_are_counted_while_in_flight_and_released_on_cancel():
    gate = asyncio.Event()
    backend = backend_with({"127.0.0.1:1": FakeClient(gate=gate)})
    shard = backend.shards.shards["127.0.0.1:1"]
    task = asyncio.create_task(backend.infer(contract(), ROWS, timeout_s=10.0))
    await asyncio.sleep(0.01)
    assert shard.outstanding_tokens == 4 and shard.inflight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert shard.outstanding_tokens == 0 and shard.inflight == 0


async def test_no_shard_holding_the_model_is_unavailable_with_a_retry_delay():
    backend = backend_with({"127.0.0.1:1": FakeClient()})
    backend.shards.shards["127.0.0.1:1"].models = {}
    with pytest.raises(RouterError) as caught:
        await backend.infer(contract(), ROWS, timeout_s=1.0)
    assert caught.value.kind is ErrorKind.BACKEND_UNAVAILABLE and caught.value.retry_after_s


async def test_an_index_no_shard_answers_is_an_error_not_an_empty_list():
    backend = TritonBackend(["127.0.0.1:1", "127.0.0.1:2"])
    backend.shards.update(["127.0.0.1:1", "127.0.0.1:2"])
    with pytest.raises(RouterError) as caught:
        await backend.describe_models()
    assert caught.value.kind is ErrorKind.BACKEND_UNAVAILABLE and caught.value.retry_after_s


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("127.0.0.1:8001", Target("127.0.0.1", 8001, False)),
        ("dns:///triton.ns.svc:8001", Target("triton.ns.svc", 8001, True)),
        ("[::1]:8001", Target("::1", 8001, False)),
    ],
)
def test_targets_parse(text, target):
    assert Target.parse(text) == target
    assert Target.parse(text).address.endswith(":8001")


@pytest.mark.parametrize("text", ["triton", "triton:", "triton:http", "dns:///:8001", "host:70000"])
def test_bad_targets_are_refused(text):
    with pytest.raises(ValueError):
        Target.parse(text)


def test_the_longer_a_models_servers_are_down_the_longer_callers_are_told_to_wait():
    from adapters.triton.backend import SERVER_DOWN_MAX_RETRY_S, SERVER_DOWN_RETRY_S, down_retry_s

    delays = [down_retry_s(t) for t in (0.0, 2.0, 4.0, 8.0, 60.0)]
    assert delays == [SERVER_DOWN_RETRY_S, SERVER_DOWN_RETRY_S, 4.0, 8.0, SERVER_DOWN_MAX_RETRY_S]


async def test_a_model_is_down_from_its_first_failure_until_a_batch_succeeds(monkeypatch):
    import adapters.triton.backend as backend_module

    clock = [100.0]
    monkeypatch.setattr(backend_module.time, "monotonic", lambda: clock[0])
    backend = backend_with({"127.0.0.1:1": FakeClient()})
    backend.shards.shards["127.0.0.1:1"].models = {}
    delays = []
    for _ in range(3):
        with pytest.raises(RouterError) as caught:
            await backend.infer(contract(), ROWS, timeout_s=None)
        delays.append(caught.value.retry_after_s)
        clock[0] += 5.0
    assert delays == [2.0, 5.0, 10.0]
    backend.shards.shards["127.0.0.1:1"].models = {contract().name: frozenset({contract().version})}
    await backend.infer(contract(), ROWS, timeout_s=None)
    assert not backend._down_since
