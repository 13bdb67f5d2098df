"""The Triton adapter's shard choice, retries and time limits, with fake stubs in place of Triton's generated
gRPC stub (no network)."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from adapters.triton.backend import TritonBackend
from adapters.triton.targets import Target
from router.core.errors import ErrorKind, RouterError
from router.core.text.windows import Window
from router.shards.picking import RetryBudget
from tests.unit.core.scheduling.test_scheduler import contract

ROWS = [Window(np.ones(4, dtype=np.int64), None, 0, 4)]


class Failed(grpc.RpcError):
    """What grpc.aio raises for a call that ended with a status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self._code, self._message = code, message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def debug_error_string(self) -> str:
        return self._message


class FakeCall:
    """A grpc.aio call: awaitable, and cancellable."""

    def __init__(self, work) -> None:
        self.task = asyncio.ensure_future(work)

    def cancel(self) -> bool:
        return self.task.cancel()

    def __await__(self):
        return self.task.__await__()


class FakeStub:
    """Answers, or fails with the given Triton status; records when each call was made and whether it was
    cancelled."""

    def __init__(self, fail: str | None = None, message: str = "down", gate: asyncio.Event | None = None) -> None:
        self.fail, self.message, self.gate = fail, message, gate
        self.calls: list[float] = []
        self.cancelled = 0

    def ModelInfer(self, request, metadata=None):  # noqa: N802 - the generated stub's name
        self.calls.append(time.monotonic())
        return FakeCall(self._answer(request))

    async def _answer(self, request):
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            raise Failed(getattr(grpc.StatusCode, self.fail.removeprefix("StatusCode.")), self.message)
        rows = request.inputs[0].shape[0]
        response = service_pb2.ModelInferResponse(model_name=request.model_name)
        response.outputs.add(name=request.outputs[0].name, datatype="FP32", shape=[rows, 4])
        response.raw_output_contents.append(np.ones((rows, 4), np.float32).tobytes())
        return response


def backend_with(stubs: dict[str, FakeStub], **options) -> TritonBackend:
    backend = TritonBackend(list(stubs), **options)
    backend.shards.update(stubs)
    for shard in backend.shards.shards.values():
        shard.ready, shard.models = True, {contract().name: frozenset({contract().version})}
    backend.fleet.stubs.update(stubs)
    return backend


async def test_a_batch_failing_on_a_dead_shard_runs_on_another_and_the_dead_one_is_ejected():
    dead, alive = FakeStub("StatusCode.UNAVAILABLE"), FakeStub()
    backend = backend_with({"127.0.0.1:1": dead, "127.0.0.1:2": alive})
    for _ in range(50):  # the first pick is a coin toss between two unmeasured shards: 50 calls settle it
        out, shard = await backend.infer(contract(), ROWS, timeout_s=10.0)
        assert out.shape == (1, 4) and shard
    assert len(dead.calls) == 1  # tried once, then ejected
    assert len(alive.calls) == 50
    assert not backend.shards.shards["127.0.0.1:1"].usable(0.0)


async def test_unavailable_on_one_shard_is_retried_within_the_deadline_left():
    stub = FakeStub("StatusCode.UNAVAILABLE")
    backend = backend_with({"127.0.0.1:1": stub}, retries=2, backoff_s=0.01)
    with pytest.raises(RouterError) as caught:
        await backend.infer(contract(), ROWS, timeout_s=10.0)
    assert caught.value.kind is ErrorKind.BACKEND_UNAVAILABLE and caught.value.retry_after_s
    assert len(stub.calls) == 3  # the first try and two retries
    assert stub.calls[2] - stub.calls[0] < 10.0


async def test_no_retry_that_would_outlive_the_deadline():
    stub = FakeStub("StatusCode.UNAVAILABLE")
    backend = backend_with({"127.0.0.1:1": stub}, backoff_s=1.0)
    with pytest.raises(RouterError):
        await backend.infer(contract(), ROWS, timeout_s=0.5)
    assert len(stub.calls) == 1


async def test_a_failure_of_the_batch_itself_is_not_retried():
    first, second = FakeStub("StatusCode.INTERNAL", "onnxruntime failed"), FakeStub()
    backend = backend_with({"127.0.0.1:1": first, "127.0.0.1:2": second})
    backend.shards.shards["127.0.0.1:2"].ready = False  # so the first is picked
    with pytest.raises(RouterError) as caught:
        await backend.infer(contract(), ROWS, timeout_s=10.0)
    assert caught.value.kind is ErrorKind.BACKEND_FAILED
    assert len(first.calls) == 1 and not second.calls
    assert backend.shards.shards["127.0.0.1:1"].usable(0.0)  # not the shard's fault: not ejected


async def test_retries_stay_within_the_budget():
    stubs = {f"127.0.0.1:{i}": FakeStub("StatusCode.UNAVAILABLE", "Exceeds maximum queue size") for i in (1, 2)}
    backend = backend_with(stubs, retries=1, retry_budget=RetryBudget(ratio=0.0, reserve=3))
    for _ in range(10):
        with pytest.raises(RouterError) as caught:
            await backend.infer(contract(), ROWS, timeout_s=10.0)
        assert caught.value.kind is ErrorKind.OVERLOADED
    assert sum(len(c.calls) for c in stubs.values()) == 10 + 3


async def test_a_shard_that_lost_the_model_passes_the_batch_on():
    gone = FakeStub("StatusCode.UNAVAILABLE", "Request for unknown model: 'm' is not found")
    backend = backend_with({"127.0.0.1:1": gone, "127.0.0.1:2": FakeStub()})
    backend.shards.shards["127.0.0.1:2"].ready = False
    await backend.infer(contract(), ROWS, timeout_s=10.0)  # panic choice among holders after the first
    assert len(gone.calls) == 1


async def test_outstanding_tokens_are_counted_while_in_flight_and_released_on_cancel():
    gate = asyncio.Event()
    backend = backend_with({"127.0.0.1:1": FakeStub(gate=gate)})
    shard = backend.shards.shards["127.0.0.1:1"]
    task = asyncio.create_task(backend.infer(contract(), ROWS, timeout_s=10.0))
    await asyncio.sleep(0.01)
    assert shard.outstanding_tokens == 4 and shard.inflight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert shard.outstanding_tokens == 0 and shard.inflight == 0


async def test_no_shard_holding_the_model_is_unavailable_with_a_retry_delay():
    backend = backend_with({"127.0.0.1:1": FakeStub()})
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
    from adapters.triton.failures import SERVER_DOWN_MAX_RETRY_S, SERVER_DOWN_RETRY_S, down_retry_s

    delays = [down_retry_s(t) for t in (0.0, 2.0, 4.0, 8.0, 60.0)]
    assert delays == [SERVER_DOWN_RETRY_S, SERVER_DOWN_RETRY_S, 4.0, 8.0, SERVER_DOWN_MAX_RETRY_S]


async def test_a_model_is_down_from_its_first_failure_until_a_batch_succeeds(monkeypatch):
    import adapters.triton.backend as backend_module

    clock = [100.0]
    monkeypatch.setattr(backend_module.time, "monotonic", lambda: clock[0])
    backend = backend_with({"127.0.0.1:1": FakeStub()})
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


async def test_a_batch_past_its_time_is_cancelled_here_and_in_triton_with_no_time_limit_sent():
    """The time limit stays in the router (a limit sent to Triton makes its batcher hold requests): the call
    is cancelled when it runs out, which cancels the request in Triton, and the caller gets BACKEND_DEADLINE."""
    gate = asyncio.Event()
    stub = FakeStub(gate=gate)
    backend = backend_with({"127.0.0.1:1": stub})
    started = time.monotonic()
    with pytest.raises(RouterError) as caught:
        await backend.infer(contract(), ROWS, timeout_s=0.05)
    assert caught.value.kind is ErrorKind.DEADLINE_EXCEEDED and caught.value.reason == "BACKEND_DEADLINE"
    assert 0.05 <= time.monotonic() - started < 1.0
    assert stub.cancelled == 1
    assert backend.shards.shards["127.0.0.1:1"].inflight == 0


def test_the_request_carries_the_padded_tensors_and_no_timeout():
    from adapters.triton.tensors import infer_request

    rows = [Window(np.array([1, 2, 3], np.int64), None, 0, 3), Window(np.array([4], np.int64), None, 0, 1)]
    request = infer_request(contract(), rows)
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        ("input_ids", "INT64", [2, 3]),
        ("attention_mask", "INT64", [2, 3]),
    ]
    assert np.frombuffer(request.raw_input_contents[0], np.int64).tolist() == [1, 2, 3, 4, 0, 0]
    assert np.frombuffer(request.raw_input_contents[1], np.int64).tolist() == [1, 1, 1, 1, 0, 0]
    assert "timeout" not in request.parameters
