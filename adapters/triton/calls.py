"""One call to Triton: a batch (`model_infer`, with its time limit kept on this side) or a generation
stream (`stream_tokens`), and its span, metadata and metrics (`CallSpan`)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_grpc
from opentelemetry import trace
from opentelemetry.propagate import inject
from tritonclient.grpc._utils import get_error_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from adapters.triton.failures import deadline_passed
from router.core.models.contract import ModelContract
from router.observability import metrics, tracing

_tracer = trace.get_tracer("modelrouter.triton")
STREAM_ENDED_EARLY = "the stream ended before its final response"


def infer_inputs(arrays: dict[str, np.ndarray]) -> list[triton_grpc.InferInput]:
    """tritonclient's input objects for named arrays."""
    inputs = []
    for name, array in arrays.items():
        tensor = triton_grpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


@functools.lru_cache(maxsize=1024)
def _call_seconds(shard: str, outcome: str):
    """A call's duration series (a label lookup costs more than the update; shards and outcomes are few)."""
    return metrics.TRITON_CALL_SECONDS.labels(shard, outcome)


@functools.lru_cache(maxsize=1024)
def shard_batches(shard: str, outcome: str):
    return metrics.SHARD_BATCHES.labels(shard, outcome)


async def model_infer(stub, request, timeout_s: float | None, metadata) -> object:
    """One ModelInfer call that is cancelled (in the router and, through gRPC, in Triton) once `timeout_s`
    has passed. The time limit stays on this side on purpose: a request that carries one to Triton (its
    `timeout` parameter, or a gRPC deadline, which Triton turns into the same) is sometimes held in
    Triton's dynamic batcher until the batcher's 500 ms wake-up, seen with nvidia-pytriton 0.7.0's
    tritonserver whenever a few such requests are in flight together (bench/FINDINGS.md, "Triton holds
    requests that carry a timeout"). Triton's errors come back as InferenceServerException."""
    call = stub.ModelInfer(request, metadata=metadata)
    timer = None
    if timeout_s is not None:
        expired = []

        def expire() -> None:
            expired.append(True)
            call.cancel()

        timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        return await call
    except asyncio.CancelledError:
        if timer is not None and expired:
            raise deadline_passed() from None
        call.cancel()  # the caller went away: so does the request in Triton
        raise
    except grpc.RpcError as rpc_error:
        raise get_error_grpc(rpc_error) from None
    finally:
        if timer is not None:
            timer.cancel()


class CallSpan:
    """One Triton call: its span (a child of the batch's anchor request, linked to every request the batch
    serves, or of the stream's request; router/observability/tracing.py), the gRPC metadata that carries its
    W3C `traceparent` to Triton (so Triton's own spans join the trace), and its duration metric by outcome
    (`ok`, Triton's status on failure, `cancelled` when the caller left first)."""

    def __init__(self, name: str, contract: ModelContract, shard: str, attempt: int, **counts: int) -> None:
        self.shard = shard
        self.started = time.monotonic()
        self.outcome = "cancelled"
        self.span = None
        self.headers: dict[str, str] | None = None
        parent = trace.get_current_span().get_span_context()
        if not (parent.is_valid and parent.trace_flags.sampled):
            return
        links, batch = tracing.call_links()  # a batch's: every request it serves
        attributes = {
            **batch,
            "modelrouter.model": contract.name,
            "modelrouter.model_version": contract.version,
            "modelrouter.shard": shard,
            "modelrouter.attempt": attempt,
            **{f"modelrouter.{key}": value for key, value in counts.items()},
        }
        self.span = _tracer.start_span(name, kind=trace.SpanKind.CLIENT, attributes=attributes, links=links)
        self.headers = {}
        inject(self.headers, context=trace.set_span_in_context(self.span))

    def succeeded(self) -> None:
        self.outcome = "ok"

    def failed(self, status: str) -> None:
        self.outcome = status.removeprefix("StatusCode.") or "error"
        if self.span is not None:
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, status))

    def end(self, **counts: int) -> None:
        _call_seconds(self.shard, self.outcome).observe(time.monotonic() - self.started)
        if self.span is not None:
            self.span.set_attribute("modelrouter.outcome", self.outcome)
            for key, value in counts.items():
                self.span.set_attribute(f"modelrouter.{key}", value)
            self.span.end()


async def stream_tokens(
    client, contract: ModelContract, tensors: list, timeout_s: float | None, headers: dict | None
) -> AsyncIterator[int]:
    """One generation request on Triton's streaming API: the token ids as they come, until Triton's final
    response. Leaving early cancels the request in Triton; a stream that ends without a final response
    fails as UNAVAILABLE (another shard may resume it)."""

    async def one_request():
        yield {
            "model_name": contract.name,
            "model_version": contract.version,
            "inputs": tensors,
            "outputs": [triton_grpc.InferRequestedOutput("output_ids")],
        }

    responses = client.stream_infer(one_request(), stream_timeout=timeout_s, headers=headers)
    finished = False  # Triton ended the call itself: nothing to cancel
    try:
        while True:
            try:
                result, error = await responses.__anext__()
            except StopAsyncIteration:
                finished = True
                raise InferenceServerException(STREAM_ENDED_EARLY, "StatusCode.UNAVAILABLE") from None
            except grpc.RpcError as rpc_error:
                raise get_error_grpc(rpc_error) from None
            if error is not None:
                raise error
            ids = result.as_numpy("output_ids")
            if ids is not None:
                for token in ids.reshape(-1):
                    yield int(token)
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                # Let the call end as Triton ends it (cancelling a finished request can cost Triton's
                # trace its root span); a call that does not end at once is cancelled below.
                try:
                    await asyncio.wait_for(responses.__anext__(), 1.0)
                except StopAsyncIteration:
                    finished = True
                except (grpc.RpcError, TimeoutError, InferenceServerException):
                    pass
                return
    finally:
        if not finished:
            responses.cancel()  # stops the model's work when the stream is left early
