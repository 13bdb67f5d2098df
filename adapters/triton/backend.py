"""The Triton backend: the only code that imports tritonclient (with fleet.py, calls.py and failures.py).

One `TritonBackend` fronts one or more Triton servers (shards) that serve the same repository. Each
batch goes to a usable shard that holds the model's version, picked by `router.shards` (power of two
choices on outstanding tokens, scaled by each shard's speed). A batch that fails in a way that says
nothing about the batch itself (the server is gone or unreachable, its queue is full, it no longer has
the model: failures.py) runs again on another shard: encoder batches are idempotent, and the retry starts
only after the first attempt has failed, so no result is delivered twice. Retries stay within the
batch's timeout and a budget of about 10% of batches. Any other failure is final.

A generation stream (`generate`) runs on one shard through Triton's streaming API; if that shard fails
mid-stream, the stream resumes on another from the prompt plus the tokens already sent.

Both go through one loop of attempts (`_Attempts`): pick a shard, call it, and on failure classify,
record the verdict on the shard, and retry elsewhere or raise the caller's error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np
import structlog
from tritonclient.utils import InferenceServerException

from adapters.triton.calls import CallSpan, infer_inputs, model_infer, shard_batches, stream_tokens
from adapters.triton.failures import Failure, down_retry_s, no_shard, version_gone
from adapters.triton.fleet import TritonFleet
from adapters.triton.targets import TritonTls
from adapters.triton.tensors import generation_tensors, infer_request, output_array
from router.core import errors
from router.core.backend import Answer, Token
from router.core.errors import RouterError
from router.core.models.contract import ModelContract, ModelDescription
from router.core.scheduling.fleet_share import ALONE, FleetShare
from router.core.text.prompting import Sampling
from router.core.text.windows import Window
from router.observability import metrics
from router.shards.picking import LEAST_WORK, HealthConfig, RetryBudget, Shard, ShardSet

log = structlog.get_logger(__name__)


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
        share: FleetShare = ALONE,
    ) -> None:
        self.shards = ShardSet(health, balancing=balancing, max_inflight=max_inflight_per_shard, share=share)
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

    def down_retry(self, model: str) -> float:
        """The retry delay for work that found no server of `model` answering, which is counted as
        down from the first such failure until a batch of it succeeds again."""
        now = time.monotonic()
        return down_retry_s(now - self._down_since.setdefault(model, now))

    def recovered(self, model: str) -> None:
        """A call of `model` succeeded: its servers are no longer counted as down."""
        self._down_since.pop(model, None)

    async def describe_models(self) -> list[ModelDescription]:
        """Each model some answering shard has ready (newest version), with the shards that hold it."""
        return self.fleet.describe()

    async def infer(
        self, contract: ModelContract, rows: Sequence[Window], timeout_s: float | None, priority: int = 0
    ) -> Answer:
        request = infer_request(contract, rows, {"priority": priority} if priority else None)
        tokens = sum(len(row.ids) for row in rows)
        attempts = _Attempts(self, contract, timeout_s, batch=True)
        self.budget.attempted()
        while True:
            shard = attempts.pick(tokens)
            async with attempts.call(shard, tokens, "triton.infer", rows=len(rows), tokens=tokens) as call:
                response = await model_infer(self.fleet.stub(shard), request, attempts.left(), call.metadata)
                call.answered(timed=True)
                return Answer(self._output(response, contract, shard), shard.address)

    @staticmethod
    def _output(response, contract: ModelContract, shard: Shard) -> np.ndarray:
        try:
            return output_array(response, contract.output_name)
        except ValueError as error:
            log.warning("triton.bad_response", shard=shard.address, model=contract.name, detail=str(error))
            raise RouterError(errors.BACKEND_FAILED, "the model server's answer lacks the model's output") from error

    async def generate(
        self, contract: ModelContract, prompt: Sequence[int], sampling: Sampling, timeout_s: float | None
    ) -> AsyncIterator[Token]:
        """Stream a generation from one shard. When that shard fails (gone, unreachable, lost the model),
        the stream goes on on another: from the prompt plus the tokens already sent, for the tokens still
        wanted, so the caller sees one unbroken stream (with greedy decoding, the very same tokens)."""
        sent: list[int] = []
        attempts = _Attempts(self, contract, timeout_s, batch=False)
        while True:
            context = [*prompt, *sent]
            wanted = dataclasses.replace(sampling, max_tokens=sampling.max_tokens - len(sent))
            tokens = len(context) + wanted.max_tokens
            shard = attempts.pick(tokens)
            tensors = infer_inputs(generation_tensors(context, wanted))
            async with attempts.call(shard, tokens, "triton.stream", prompt_tokens=len(context)) as call:
                client = self.fleet.client(shard)
                try:
                    async for token in stream_tokens(client, contract, tensors, attempts.left(), call.headers):
                        sent.append(token)
                        yield Token(token, shard.address)
                finally:
                    call.counts["generated"] = len(sent)
                call.answered(timed=False)  # a stream's length says nothing of the shard's speed
                return
            attempts.resumed(len(sent))

    async def close(self) -> None:
        await self.fleet.close()


class _Attempts:
    """The attempts of one batch or stream: which shards were tried, the deadline, and what a failure
    leads to (another shard, the same one after a backoff, or the caller's error). A `batch` may go back
    to a shard it tried, after a backoff, and its version gone from every shard is MODEL_VERSION_GONE (the
    scheduler hands it to the next version); a stream does neither."""

    def __init__(self, backend: TritonBackend, contract: ModelContract, timeout_s: float | None, batch: bool):
        self.backend, self.contract, self.batch = backend, contract, batch
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.tried: list[str] = []

    def left(self) -> float | None:
        return None if self.deadline is None else max(0.001, self.deadline - time.monotonic())

    def pick(self, tokens: int) -> Shard:
        """A usable shard not tried yet; once every one was, a batch tries the least loaded again (after
        its backoff). None left: the version is gone, or no server answers."""
        shards, model, version = self.backend.shards, self.contract.name, self.contract.version
        now = time.monotonic()
        shard = shards.pick(model, version, tokens, now, exclude=self.tried)
        if shard is None and self.tried and self.batch:
            shard = shards.pick(model, version, tokens, now)
        if shard is not None:
            return shard
        if version and (shards.holding(model) if self.batch else self.tried):
            raise version_gone(model, version)
        raise no_shard(model, self.backend.down_retry(model))

    def call(self, shard: Shard, work: int, name: str, **counts: int) -> _Call:
        """One attempt on `shard` of `work` tokens; `counts` go on its span."""
        return _Call(self, shard, work, CallSpan(name, self.contract, shard.address, len(self.tried), **counts))

    async def failed(self, shard: Shard, tokens: int, failure: Failure) -> None:
        """Record a failed call; return to try again, or raise the caller's error."""
        backend, model, version = self.backend, self.contract.name, self.contract.version
        if failure.shard_down:
            backend.shards.failed(shard, tokens, time.monotonic())
        else:
            backend.shards.ended(shard, tokens)
        if failure.shard_down or failure.model_gone:
            backend.fleet.poke()
        # Another shard first, at once; the same one again (all tried) only after a backoff.
        others = len(backend.shards.holding(model, version)) - 1
        wait = backend.backoff_s * 2 ** len(self.tried) if self.batch and len(self.tried) >= others else 0.0
        in_time = self.deadline is None or time.monotonic() + wait < self.deadline
        if failure.retryable and len(self.tried) < backend.retries and in_time and backend.budget.try_retry():
            shard_batches(shard.address, "retried").inc()
            self.tried.append(shard.address)
            log.info("triton.retry", shard=shard.address, model=model, attempt=len(self.tried), status=failure.status)
            if wait:
                await asyncio.sleep(wait)
            return
        shard_batches(shard.address, failure.outcome).inc()
        if failure.model_gone and version and self.batch:
            raise version_gone(model, version) from failure.error
        down_retry = backend.down_retry(model) if failure.shard_down else 0.0
        raise failure.as_router_error(shard.address, model, down_retry) from failure.error

    def resumed(self, sent: int) -> None:
        if sent:
            log.info("triton.stream_resumed", model=self.contract.name, attempt=len(self.tried), tokens_sent=sent)


class _Call:
    """One attempt, as a context: the body makes the call and says `answered`; a Triton error leaving it
    is classified and either swallowed (the loop tries again) or raised as the caller's error; anything
    else (the caller left, a stop matched) releases the shard without a verdict."""

    def __init__(self, attempts: _Attempts, shard: Shard, tokens: int, span: CallSpan) -> None:
        self.attempts, self.shard, self.tokens, self.span = attempts, shard, tokens, span
        self.started = time.monotonic()
        self.verdict = False
        self.headers = span.headers  # the call's traceparent, for Triton
        self.metadata = tuple(span.headers.items()) if span.headers else None
        self.counts: dict[str, int] = {}  # set on the span when the call ends

    def answered(self, timed: bool) -> None:
        """The call succeeded: `timed` when its duration measures the shard's speed (a batch's does)."""
        backend, shard = self.attempts.backend, self.shard
        self.verdict = True
        self.span.succeeded()
        now = time.monotonic()
        if timed:
            backend.shards.succeeded(shard, self.tokens, now - self.started, now)
        else:
            backend.shards.ended(shard, self.tokens)
        backend.recovered(self.attempts.contract.name)
        shard_batches(shard.address, "ok").inc()

    async def __aenter__(self) -> _Call:
        self.attempts.backend.shards.started(self.shard, self.tokens)
        return self

    async def __aexit__(self, kind, error, traceback) -> bool:
        try:
            if isinstance(error, InferenceServerException):
                self.verdict = True
                failure = Failure(error)
                self.span.failed(failure.status)
                await self.attempts.failed(self.shard, self.tokens, failure)
                return True  # try again
            return False
        finally:
            if not self.verdict:  # cancelled, or an error outside Triton's: no verdict on the shard
                self.attempts.backend.shards.ended(self.shard, self.tokens)
            self.span.end(**self.counts)
            metrics.SHARD_OUTSTANDING_TOKENS.labels(self.shard.address).set(self.shard.outstanding_tokens)
