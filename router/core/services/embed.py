"""Embed: one vector per input, long inputs windowed and pooled back by the model's pooling, then put in
the encoding the caller asked for (quantize.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from router.core import errors
from router.core.config import RequestLimits
from router.core.errors import ErrorKind, FieldViolation, RouterError
from router.core.models.contract import Task
from router.core.models.registry import ServedModel
from router.core.services.pipeline import RequestPipeline
from router.core.services.types import NO_CALL_CONTEXT, CallContext, EmbedRequest, EmbedResult
from router.core.services.validation import check_count, resolve_truncation
from router.core.text.pooling import combine_windows, l2_normalize
from router.core.text.quantize import encode
from router.core.text.windows import Split


@dataclass
class _EmbedJob:
    request: EmbedRequest
    field: str = "inputs"

    def validate(self, served: ServedModel, limits: RequestLimits) -> None:
        check_count("inputs", self.request.inputs, limits, errors.EMPTY_INPUTS)
        dimensions = self.request.dimensions
        if dimensions is not None:
            allowed = set(served.contract.dimensions) | {served.contract.embedding_dimensions}
            if dimensions not in allowed:
                raise errors.invalid(
                    errors.UNSUPPORTED_OPTION,
                    f"model {served.contract.name!r} cannot return {errors.echo(dimensions)} dimensions",
                    [FieldViolation("dimensions", f"supported: {sorted(allowed)}")],
                )
        contract = served.contract
        width = dimensions or contract.embedding_dimensions
        if self.request.encoding.packs_bits and width % 8:
            raise errors.invalid(
                errors.UNSUPPORTED_OPTION,
                f"{self.request.encoding.value} packs 8 components a byte; {width} dimensions are not a multiple of 8",
                [FieldViolation("encoding", f"{width} dimensions: ask for a multiple of 8, or another encoding")],
            )
        self.prefix = ""
        input_type = self.request.input_type
        if input_type is not None:
            declared = [name for name, _ in contract.input_prefixes]
            if input_type not in declared:
                offered = f"declares {', '.join(declared)}" if declared else "declares none"
                raise errors.invalid(
                    errors.UNSUPPORTED_OPTION,
                    f"model {contract.name!r} has no input type {input_type!r} (it {offered})",
                    [FieldViolation("input_type", f"the model {offered}; unspecified is always accepted")],
                )
            self.prefix = contract.prefix(input_type)
        self.truncation = resolve_truncation(served, self.request.truncation)

    def size(self) -> int:
        return sum(len(text) for text in self.request.inputs)

    def count(self) -> int:
        return len(self.request.inputs)

    def tokenize(self, served: ServedModel, limits: RequestLimits, part: slice) -> list[Split]:
        contract = served.contract
        return served.tokenizer.split(
            self.request.inputs[part],
            contract.max_sequence_length,
            self.truncation,
            limits.chunk_overlap,
            prefix=self.prefix,
            offsets=False,  # an embedding does not say where its windows lie
        )


PARTS_AHEAD = 2
"""A stream's parts queued behind the one being answered (besides one read and waiting for room): enough
to keep the model's batches full between parts, few enough that a caller sending 100,000 inputs holds
only a few parts' work in the router at once."""


class EmbedService:
    def __init__(self, pipeline: RequestPipeline) -> None:
        self.pipeline = pipeline

    async def embed_stream(
        self,
        parts: AsyncIterator[EmbedRequest],
        call: CallContext = NO_CALL_CONTEXT,
        authorize: Callable[[str], None] = lambda model: None,
    ) -> AsyncIterator[tuple[int, EmbedResult]]:
        """Embed each part as an Embed call would, several at once, and yield (offset of the part's first
        input, its result) in part order as soon as each is done. `authorize` checks the model once, on
        the first part. A part refused as overloaded waits its retry delay and runs again."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=PARTS_AHEAD)

        async def read() -> None:
            offset, model = 0, None
            try:
                async for part in parts:
                    if model is None:
                        authorize(part.model)
                        model = part.model
                    elif part.model != model:
                        raise errors.invalid(
                            errors.INVALID_VALUE,
                            f"a stream embeds with one model; a part names {errors.echo(part.model)}",
                            [FieldViolation("request.model", f"set it on the first part only ({model!r})")],
                        )
                    task = asyncio.ensure_future(self._part(part, call))
                    await queue.put((offset, task))  # waits while PARTS_AHEAD are queued: flow control
                    offset += len(part.inputs)
                if model is None:
                    raise errors.invalid(
                        errors.EMPTY_INPUTS,
                        "the stream sent no part",
                        [FieldViolation("request", "send at least one part with inputs")],
                    )
                await queue.put(None)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the stream fails with it, after the parts before
                await queue.put(error)

        reader = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                offset, task = item
                yield offset, await task
        finally:
            reader.cancel()
            while not queue.empty():
                item = queue.get_nowait()
                if isinstance(item, tuple):
                    item[1].cancel()
                    if item[1].done() and not item[1].cancelled():
                        item[1].exception()  # retrieved: the stream already failed with an earlier error
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _part(self, request: EmbedRequest, call: CallContext) -> EmbedResult:
        """One part; refused as overloaded, it waits the retry delay (within the deadline) and tries again."""
        while True:
            try:
                return await self.embed(request, call)
            except RouterError as error:
                delay = error.retry_after_s
                if error.kind is not ErrorKind.OVERLOADED or delay is None:
                    raise
                if call.deadline is not None and time.monotonic() + delay >= call.deadline:
                    raise
                await asyncio.sleep(delay)

    def texts_of_ids(self, model: str, inputs: Sequence[Sequence[int]], field: str = "inputs") -> list[str]:
        """Inputs given as the model's own token ids (what OpenAI's API calls token arrays), as the texts
        they are: decoded by the model's tokenizer, then embedded as any text (tokenized again, so cut into
        windows and counted as every input is). An id outside the vocabulary is refused, naming it."""
        tokenizer = self.pipeline.registry.get(model, Task.EMBED).tokenizer.raw
        size = tokenizer.get_vocab_size()
        bad = []
        for i, ids in enumerate(inputs):
            wrong = next((t for t in ids if not 0 <= t < size), None)
            if wrong is not None:
                bad.append(
                    FieldViolation(f"{field}[{i}]", f"token id {wrong} is not in the vocabulary (0 to {size - 1})")
                )
        if bad:
            raise errors.invalid(
                errors.INVALID_VALUE,
                f"{len(bad)} input(s) hold token ids outside model {model!r}'s vocabulary: token arrays are the "
                "model's own ids",
                bad,
            )
        return tokenizer.decode_batch([list(ids) for ids in inputs], skip_special_tokens=True)

    async def embed(self, request: EmbedRequest, call: CallContext = NO_CALL_CONTEXT) -> EmbedResult:
        done = await self.pipeline.run(request.model, Task.EMBED, call, _EmbedJob(request), request.version)
        combined = time.monotonic()
        contract = done.served.contract
        if all(len(split.windows) == 1 for split in done.splits):
            vectors = done.rows.astype(np.float32, copy=False)
        else:
            vectors = np.empty((len(done.splits), done.rows.shape[1]), dtype=np.float32)
            for i, (start, end) in enumerate(done.per_split()):
                weights = [w.length for w in done.windows[start:end]]
                vectors[i] = combine_windows(done.rows[start:end], weights, contract.pooling)
        if request.dimensions is not None:
            vectors = vectors[:, : request.dimensions]
        if contract.normalize if request.normalize is None else request.normalize:
            vectors = l2_normalize(vectors)
        encoded = encode(vectors, request.encoding, contract.quantization_range)
        done.timing.total += time.monotonic() - combined
        return EmbedResult(
            model=contract.name,
            embeddings=encoded,
            usage=done.usage,
            timing=done.timing,
            version=done.version,
            encoding=request.encoding,
            dimensions=vectors.shape[1],
            inputs=done.inputs(),
        )
