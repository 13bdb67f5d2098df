"""Generate: a prompt or a chat in, text streamed out.

enter the pipeline (resolve the model, check options and values: prompting.py) -> render the chat,
tokenize, fit the context -> a place in the model's running batch (streams.py) -> the backend streams
token ids -> the router turns them into text (whole UTF-8 characters, via the tokenizer's own streaming
decoder), ends at the model's end tokens, matches stop strings across token boundaries (never sent), and
stops the model's work when the caller goes away, a stop matches or the deadline passes (closing the
backend stream cancels the request in the model server).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tokenizers.decoders import DecodeStream

from router.core.config import RequestLimits
from router.core.errors import BACKEND_DEADLINE, RouterError
from router.core.models.contract import Task
from router.core.models.registry import ServedModel
from router.core.services.accounting import log_shards
from router.core.services.pipeline import RequestPipeline
from router.core.services.types import NO_CALL_CONTEXT, CallContext, GenerateRequest
from router.core.text.prompting import Prompt, Sampling, StopMatcher, check_request, fit_context

STOP, LENGTH, CANCELLED = "stop", "length", "cancelled"


@dataclass(frozen=True)
class Delta:
    """Text generated since the previous delta; the first one also names the model version answering."""

    text: str
    model_version: str = ""


@dataclass(frozen=True)
class Finished:
    reason: str
    stop: str | None
    model_version: str
    prompt_tokens: int
    completion_tokens: int
    dropped_tokens: int
    dropped_messages: int
    queue_s: float
    time_to_first_token_s: float | None
    total_s: float


class _Checks:
    """Generate's checks on entering the pipeline: options the model honours, values in range."""

    def __init__(self, request: GenerateRequest) -> None:
        self.request = request
        self.field = "messages" if request.messages else "prompt"

    def validate(self, served: ServedModel, limits: RequestLimits) -> None:
        check_request(served.contract, self.request)

    def size(self) -> int:
        return len(self.request.prompt or "") + sum(len(m.content) for m in self.request.messages or ())


@dataclass
class _Progress:
    """How far a generation got: tokens, why it ended, the stop string matched, its first text's time."""

    count: int = 0
    reason: str = LENGTH
    matched: str | None = None
    first: float | None = None


class GenerateService:
    def __init__(self, pipeline: RequestPipeline) -> None:
        self.pipeline = pipeline

    async def generate(
        self, request: GenerateRequest, call: CallContext = NO_CALL_CONTEXT
    ) -> AsyncIterator[Delta | Finished]:
        started = time.monotonic()
        with self.pipeline.inside():
            served, _ = self.pipeline.enter(request.model, Task.GENERATE, _Checks(request))
            assert served.generation is not None  # every generate model has one (registry)
            prompt = fit_context(
                request, served.contract.max_sequence_length, served.tokenizer.encode_prompt, served.generation.template
            )
            gate = served.generation.gate
            tokens = len(prompt.ids) + prompt.max_tokens
            granted = await gate.enter(call.tenant, tokens, call.deadline, call.criticality)
            ran: float | None = None
            try:
                progress = _Progress()
                stops = StopMatcher(request.stop)
                async for delta in self._deltas(served, request, prompt, stops, call, progress):
                    yield delta
                ran = time.monotonic() - granted
                rest = ""
                if progress.matched is None:
                    rest, progress.matched = stops.flush()
                    progress.reason = STOP if progress.matched is not None else progress.reason
                if rest:
                    yield Delta(rest, served.contract.version if progress.first is None else "")
                    progress.first = progress.first or time.monotonic()
                yield _finished(served, prompt, progress, started, granted)
            except TimeoutError:
                raise RouterError(BACKEND_DEADLINE, "the deadline passed while generating") from None
            finally:
                gate.leave(call.tenant, ran)

    async def _deltas(
        self,
        served: ServedModel,
        request: GenerateRequest,
        prompt: Prompt,
        stops: StopMatcher,
        call: CallContext,
        progress: _Progress,
    ) -> AsyncIterator[Delta]:
        """The backend's tokens as text, until an end token, a stop string or max_tokens."""
        contract, generation = served.contract, served.generation
        decoder = DecodeStream(skip_special_tokens=True)
        timeout = None if call.deadline is None else max(0.001, call.deadline - time.monotonic())
        sampling = _sampling(served, request, prompt)
        tokens = self.pipeline.registry.backend.generate(contract, prompt.ids, sampling, timeout)
        shards: set[str] = set()
        try:
            async for token, shard in tokens:
                progress.count += 1
                shards.add(shard)
                if token in generation.end_ids:
                    progress.reason = STOP
                    break
                piece = decoder.step(served.tokenizer.raw, token)
                text, matched = stops.feed(piece) if piece else ("", None)
                if text:
                    if progress.first is None:
                        progress.first = time.monotonic()
                        yield Delta(text, contract.version)
                    else:
                        yield Delta(text)
                if matched is not None:
                    progress.reason, progress.matched = STOP, matched
                    break
                if progress.count > prompt.max_tokens:  # the model was asked for max_tokens; never pass more
                    break
        finally:
            await tokens.aclose()  # cancels the model server's work if it is still generating
            log_shards(shards)


def _sampling(served: ServedModel, request: GenerateRequest, prompt: Prompt) -> Sampling:
    generation = served.generation
    return Sampling(
        max_tokens=prompt.max_tokens,
        temperature=request.temperature or 0.0,
        top_p=request.top_p,
        top_k=request.top_k,
        seed=request.seed,
        repetition_penalty=request.repetition_penalty,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        end_id=generation.end_ids[0] if generation.end_ids else None,
        stop_ids=generation.end_ids[1:],
        pad_id=served.contract.pad_id,
    )


def _finished(served: ServedModel, prompt: Prompt, progress: _Progress, started: float, granted: float) -> Finished:
    return Finished(
        reason=progress.reason,
        stop=progress.matched,
        model_version=served.contract.version,
        prompt_tokens=len(prompt.ids),
        completion_tokens=progress.count,
        dropped_tokens=prompt.dropped_tokens,
        dropped_messages=prompt.dropped_messages,
        queue_s=granted - started,
        time_to_first_token_s=None if progress.first is None else progress.first - started,
        total_s=time.monotonic() - started,
    )
