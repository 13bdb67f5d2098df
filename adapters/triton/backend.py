"""The Triton backend: the only code that imports tritonclient (with fleet.py, its discovery).

One `TritonBackend` fronts one or more Triton servers (shards) that serve the same repository. Each
batch goes to a usable shard that holds the model's version, picked by the core's `ShardSet` (power of
two choices on outstanding tokens, scaled by each shard's speed). A batch that fails in a way that says
nothing about the batch itself (the server is gone or unreachable, its queue is full, it no longer has
the model) runs again on another shard: encoder batches are idempotent, and the retry starts only after
the first attempt has failed, so no result is delivered twice. Retries stay within the batch's timeout
and a budget of about 10% of batches. Any other failure is final.

A generation stream (`generate`) runs on one shard through Triton's streaming API; if that shard fails
mid-stream, the stream resumes on another from the prompt plus the tokens already sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np
import structlog
import tritonclient.grpc.aio as triton_grpc
from opentelemetry import trace
from opentelemetry.propagate import inject
from tritonclient.grpc._utils import get_error_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from adapters.triton.fleet import TritonFleet, TritonTls
from adapters.triton.tensors import generation_tensors, infer_request, output_array
from router.core import errors
from router.core.backend import answered_by
from router.core.errors import RouterError
from router.core.models.contract import ModelContract, ModelDescription
from router.core.text.prompting import Sampling
from router.core.text.tokenize import Window
from router.observability import metrics, tracing
from router.shards.picking import LEAST_WORK, HealthConfig, RetryBudget, Shard, ShardSet

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer("modelrouter.triton")


class Failure:
    """What a failed Triton call says: whose fault it was, and whether another shard may run the batch."""

    def __init__(self, error: InferenceServerException) -> None:
        status, message = str(error.status() or ""), (error.message() or "").lower()
        self.status = status
        self.queue_full = status == "StatusCode.UNAVAILABLE" and "queue" in message
        self.model_gone = ("unknown model" in message or "is not ready" in message or "not found" in message) and (
            status in ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT")
        )
        # Connection lost, server gone or shutting down: the shard's fault.
        self.shard_down = status in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED") and not (
            self.queue_full or self.model_gone
        )
        self.retryable = self.shard_down or self.queue_full or self.model_gone


SERVER_DOWN_RETRY_S = 2.0
"""The least retry delay when no server that holds the model answers: a model server that went down
takes seconds to come back (2-3 s here for the smallest model loaded alone, 9 s seen on a busy CI
machine), and discovery sees it within a poll (1 s)."""
SERVER_DOWN_MAX_RETRY_S = 10.0


def down_retry_s(down_for_s: float) -> float:
    """The retry delay once the model's servers have been unreachable for `down_for_s`: as long again
    (an outage that has lasted a while is likely to last a while more), from SERVER_DOWN_RETRY_S up to
    SERVER_DOWN_MAX_RETRY_S. gRPC's retry policy makes five attempts at most; with delays of about 2, 2,
    4 and 8 s they span 16 s of outage."""
    return min(SERVER_DOWN_MAX_RETRY_S, max(SERVER_DOWN_RETRY_S, down_for_s))


def _as_router_error(
    error: InferenceServerException, failure: Failure, shard: str, model: str, down_retry: float
) -> RouterError:
    status = failure.status
    log.warning("triton.error", shard=shard, model=model, status=status, detail=error.message())
    if failure.shard_down or failure.model_gone:
        return RouterError(
            errors.BACKEND_UNAVAILABLE,
            "the model server is unavailable",
            retry_after_s=down_retry or SERVER_DOWN_RETRY_S,
        )
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return RouterError(errors.BACKEND_DEADLINE, "the model server ran out of time")
    if failure.queue_full or status == "StatusCode.RESOURCE_EXHAUSTED":
        return RouterError(errors.BACKEND_OVERLOADED, "the model server is overloaded", retry_after_s=0.5)
    return RouterError(errors.BACKEND_FAILED, "the model server failed the request")


def _no_shard(model: str, down_retry: float) -> RouterError:
    return RouterError(
        errors.BACKEND_UNAVAILABLE,
        f"no model server that holds {model!r} is available",
        retry_after_s=down_retry,
        metadata={"model": model},
    )


def _version_gone(model: str, version: str) -> RouterError:
    return RouterError(
        errors.MODEL_VERSION_GONE,
        f"version {version} of {model!r} is no longer on any model server",
        retry_after_s=1.0,
        metadata={"model": model},
    )


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
def _shard_batches(shard: str, outcome: str):
    return metrics.SHARD_BATCHES.labels(shard, outcome)


def _deadline_passed() -> InferenceServerException:
    return InferenceServerException(
        "the caller's deadline passed before the model server answered", status="StatusCode.DEADLINE_EXCEEDED"
    )


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
            raise _deadline_passed() from None
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


class TritonBackend:
    def __init__(
        self,
        targets: Sequence[str],
        retries: int = 2,
        backoff_s: float = 0.05,
        discovery_interval_s: float = 1.0,
        dns_interval_s: float = 5.0,
        retry_budget: RetryBudget | None = None,
        health: HealthConfig | None = None,
        balancing: str = LEAST_WORK,
        max_inflight_per_shard: int | None = None,
        tls: TritonTls | None = None,
    ) -> None:
        self.shards = ShardSet(health, balancing=balancing, max_inflight=max_inflight_per_shard)
        self.fleet = TritonFleet(targets, self.shards, discovery_interval_s, dns_interval_s, tls=tls)
        self.retries = retries
        self.backoff_s = backoff_s
        self.budget = retry_budget or RetryBudget()
        self._down_since: dict[str, float] = {}
        """Model -> when its work first found no server answering (cleared by a success)."""

    @property
    def addresses(self) -> list[str]:
        return list(self.shards.shards)

    async def start(self) -> None:
        """Find the shards and what they hold, then keep doing so in the background."""
        await self.fleet.start()

    async def is_ready(self) -> bool:
        return any(shard.ready for shard in self.shards.shards.values())

    def _down_retry(self, model: str) -> float:
        """The retry delay for work that found no server of `model` answering, which is counted as
        down from the first such failure until a batch of it succeeds again."""
        now = time.monotonic()
        return down_retry_s(now - self._down_since.setdefault(model, now))

    async def describe_models(self) -> list[ModelDescription]:
        """Each model some answering shard has ready (newest version), with the shards that hold it."""
        return self.fleet.describe()

    async def infer(self, contract: ModelContract, rows: Sequence[Window], timeout_s: float | None) -> np.ndarray:
        model, output = contract.name, contract.output_name
        request = infer_request(contract, rows)
        tokens = sum(len(row.ids) for row in rows)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        tried: list[str] = []
        self.budget.attempted()
        while True:
            now = time.monotonic()
            shard = self.shards.pick(model, contract.version, tokens, now, exclude=tried)
            if shard is None and tried:
                # Every usable shard was tried: the least loaded one again, after a short backoff.
                shard = self.shards.pick(model, contract.version, tokens, now)
            if shard is None:
                if contract.version and self.shards.holding(model):
                    raise _version_gone(model, contract.version)
                raise _no_shard(model, self._down_retry(model))
            left = None if deadline is None else max(0.001, deadline - now)
            self.shards.started(shard, tokens)
            verdict = False
            call = CallSpan("triton.infer", contract, shard.address, len(tried), rows=len(rows), tokens=tokens)
            try:
                metadata = tuple(call.headers.items()) if call.headers else None
                response = await model_infer(self.fleet.stub(shard), request, left, metadata)
                verdict = True
                call.succeeded()
                self.shards.succeeded(shard, tokens, time.monotonic() - now, time.monotonic())
                self._down_since.pop(model, None)
                _shard_batches(shard.address, "ok").inc()
                answered_by.set(shard.address)
                try:
                    return output_array(response, output)
                except ValueError as error:
                    log.warning("triton.bad_response", shard=shard.address, model=model, detail=str(error))
                    raise RouterError(
                        errors.BACKEND_FAILED, "the model server's answer lacks the model's output"
                    ) from error
            except InferenceServerException as error:
                failure = Failure(error)
                verdict = True
                call.failed(failure.status)
                self._record(shard, tokens, failure)
                if failure.shard_down or failure.model_gone:
                    self.fleet.poke()
                # Another shard first, at once; the same one again (all tried) only after a backoff.
                others = len(self.shards.holding(model, contract.version)) - 1
                backoff = self.backoff_s * 2 ** len(tried) if len(tried) >= others else 0.0
                in_time = deadline is None or time.monotonic() + backoff < deadline
                outcome = "failed" if failure.shard_down else "error"
                if failure.retryable and len(tried) < self.retries and in_time and self.budget.try_retry():
                    _shard_batches(shard.address, "retried").inc()
                    tried.append(shard.address)
                    log.info(
                        "triton.retry", shard=shard.address, model=model, attempt=len(tried), status=failure.status
                    )
                    if backoff:
                        await asyncio.sleep(backoff)
                    continue
                _shard_batches(shard.address, outcome).inc()
                if failure.model_gone and contract.version:
                    raise _version_gone(model, contract.version) from error
                raise _as_router_error(
                    error, failure, shard.address, model, self._down_retry(model) if failure.shard_down else 0.0
                ) from error
            finally:
                if not verdict:  # cancelled, or an error outside Triton's: no verdict on the shard
                    self.shards.ended(shard, tokens)
                call.end()
                metrics.SHARD_OUTSTANDING_TOKENS.labels(shard.address).set(shard.outstanding_tokens)

    async def generate(
        self, contract: ModelContract, prompt: Sequence[int], sampling: Sampling, timeout_s: float | None
    ) -> AsyncIterator[int]:
        """Stream a generation from one shard. When that shard fails (gone, unreachable, lost the model),
        the stream goes on on another: from the prompt plus the tokens already sent, for the tokens still
        wanted, so the caller sees one unbroken stream (with greedy decoding, the very same tokens)."""
        model = contract.name
        sent: list[int] = []
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        tried: list[str] = []
        while True:
            now = time.monotonic()
            context = [*prompt, *sent]
            wanted = dataclasses.replace(sampling, max_tokens=sampling.max_tokens - len(sent))
            tokens = len(context) + wanted.max_tokens
            shard = self.shards.pick(model, contract.version, tokens, now, exclude=tried)
            if shard is None:
                raise (
                    _version_gone(model, contract.version)
                    if tried and contract.version
                    else _no_shard(model, self._down_retry(model))
                )
            tensors = infer_inputs(generation_tensors(context, wanted))
            self.shards.started(shard, tokens)
            verdict = False
            call = CallSpan("triton.stream", contract, shard.address, len(tried), prompt_tokens=len(context))
            try:
                left = None if deadline is None else max(0.001, deadline - now)
                async for token in self._stream(shard, contract, tensors, left, call.headers):
                    sent.append(token)
                    answered_by.set(shard.address)
                    yield token
                verdict = True
                call.succeeded()
                self.shards.ended(shard, tokens)  # a stream's length says nothing of the shard's speed
                self._down_since.pop(model, None)
                metrics.SHARD_BATCHES.labels(shard.address, "ok").inc()
                return
            except InferenceServerException as error:
                failure = Failure(error)
                verdict = True
                call.failed(failure.status)
                self._record(shard, tokens, failure)
                if failure.shard_down:
                    self.fleet.poke()
                in_time = deadline is None or time.monotonic() < deadline
                if failure.retryable and in_time and len(tried) < self.retries and self.budget.try_retry():
                    metrics.SHARD_BATCHES.labels(shard.address, "retried").inc()
                    tried.append(shard.address)
                    log.info(
                        "triton.stream_resumed" if sent else "triton.retry",
                        shard=shard.address,
                        model=model,
                        attempt=len(tried),
                        tokens_sent=len(sent),
                        status=failure.status,
                    )
                    continue
                metrics.SHARD_BATCHES.labels(shard.address, "failed" if failure.shard_down else "error").inc()
                raise _as_router_error(
                    error, failure, shard.address, model, self._down_retry(model) if failure.shard_down else 0.0
                ) from error
            finally:
                if not verdict:  # the caller left, or a stop matched: the stream was cancelled
                    self.shards.ended(shard, tokens)
                call.end(generated=len(sent))

    async def _stream(
        self, shard: Shard, contract: ModelContract, tensors: list, timeout_s: float | None, headers: dict | None
    ) -> AsyncIterator[int]:
        async def one_request():
            yield {
                "model_name": contract.name,
                "model_version": contract.version,
                "inputs": tensors,
                "outputs": [triton_grpc.InferRequestedOutput("output_ids")],
            }

        responses = self.fleet.client(shard).stream_infer(one_request(), stream_timeout=timeout_s, headers=headers)
        ended = False
        try:
            while True:
                try:
                    result, error = await responses.__anext__()
                except StopAsyncIteration:
                    ended = "the stream ended before its final response"
                    raise InferenceServerException(ended, "StatusCode.UNAVAILABLE") from None
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
                        ended = True
                    except (grpc.RpcError, TimeoutError, InferenceServerException):
                        pass
                    return
        finally:
            if not ended:
                responses.cancel()  # stops the model's work when the stream is left early

    def _record(self, shard: Shard, tokens: int, failure: Failure) -> None:
        """A failed call's verdict on its shard: ejected when the shard is at fault, else only released."""
        if failure.shard_down:
            self.shards.failed(shard, tokens, time.monotonic())
        else:
            self.shards.ended(shard, tokens)

    async def close(self) -> None:
        await self.fleet.close()
