"""Generate: a prompt or a chat in, text streamed out.

resolve the model -> check options and values (prompting.py) -> render the chat, tokenize, fit the
context -> a place in the model's running batch (streams.py) -> the backend streams token ids -> the
router turns them into text (whole UTF-8 characters, via the tokenizer's own streaming decoder), ends at
the model's end tokens, matches stop strings across token boundaries (never sent), and stops the model's
work when the caller goes away, a stop matches or the deadline passes (closing the backend stream cancels
the request in the model server).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tokenizers.decoders import DecodeStream

from router.core.errors import BACKEND_DEADLINE, RouterError
from router.core.models.contract import Task
from router.core.services.accounting import log_shards
from router.core.services.pipeline import RequestPipeline
from router.core.services.types import NO_CALL_CONTEXT, CallContext
from router.core.services.validation import check_characters
from router.core.text.prompting import GenerateRequest, Sampling, StopMatcher, check_request, fit_context

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


class GenerateService:
    def __init__(self, pipeline: RequestPipeline) -> None:
        self.pipeline = pipeline

    async def generate(
        self, request: GenerateRequest, call: CallContext = NO_CALL_CONTEXT
    ) -> AsyncIterator[Delta | Finished]:
        started = time.monotonic()
        with self.pipeline.inside():
            served = self.pipeline.registry.get(request.model, Task.GENERATE)
            contract, generation = served.contract, served.generation
            assert generation is not None  # every generate model has one (registry)
            check_request(contract, request)
            characters = len(request.prompt or "") + sum(len(m.content) for m in request.messages or ())
            check_characters("messages" if request.messages else "prompt", characters, self.pipeline.limits)
            prompt = fit_context(
                request, contract.max_sequence_length, served.tokenizer.encode_prompt, generation.template
            )
            sampling = Sampling(
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
                pad_id=contract.pad_id,
            )
            gate = generation.gate
            granted = await gate.enter(call.tenant, len(prompt.ids) + prompt.max_tokens, call.deadline)
            ran: float | None = None
            try:
                first: float | None = None
                count, reason, matched = 0, LENGTH, None
                decoder = DecodeStream(skip_special_tokens=True)
                stops = StopMatcher(request.stop)
                timeout = None if call.deadline is None else max(0.001, call.deadline - time.monotonic())
                tokens = self.pipeline.registry.backend.generate(contract, prompt.ids, sampling, timeout)
                shards: set[str] = set()
                try:
                    async for token, shard in tokens:
                        count += 1
                        shards.add(shard)
                        if token in generation.end_ids:
                            reason = STOP
                            break
                        piece = decoder.step(served.tokenizer.raw, token)
                        text, matched = stops.feed(piece) if piece else ("", None)
                        if text:
                            if first is None:
                                first = time.monotonic()
                                yield Delta(text, contract.version)
                            else:
                                yield Delta(text)
                        if matched is not None:
                            reason = STOP
                            break
                        if count > prompt.max_tokens:  # the model was asked for max_tokens; never pass more
                            break
                finally:
                    await tokens.aclose()  # cancels the model server's work if it is still generating
                    log_shards(shards)
                ran = time.monotonic() - granted
                rest = ""
                if matched is None:
                    rest, matched = stops.flush()
                    reason = STOP if matched is not None else reason
                if rest:
                    yield Delta(rest, contract.version if first is None else "")
                    first = first or time.monotonic()
                yield Finished(
                    reason=reason,
                    stop=matched,
                    model_version=contract.version,
                    prompt_tokens=len(prompt.ids),
                    completion_tokens=count,
                    dropped_tokens=prompt.dropped_tokens,
                    dropped_messages=prompt.dropped_messages,
                    queue_s=granted - started,
                    time_to_first_token_s=None if first is None else first - started,
                    total_s=time.monotonic() - started,
                )
            except TimeoutError:
                raise RouterError(BACKEND_DEADLINE, "the deadline passed while generating") from None
            finally:
                gate.leave(call.tenant, ran)
