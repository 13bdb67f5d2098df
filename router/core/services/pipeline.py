"""The one request pipeline every RPC enters (`enter`: resolve the model, validate against its contract);
encoder RPCs (Embed, Rerank) then go all the way through it (`run`):

resolve the model -> validate against its contract -> admission precheck -> tokenize and cut ->
size checks -> schedule -> account (usage, timing).

Generate leaves after `enter` for its own stream (generate.py).

What differs per method is a `Job`: its checks, how it tokenizes (texts, or query and document pairs),
and, after the pipeline, how rows combine into its result. The pipeline also counts the requests in it,
so a shutdown can stop admitting and wait for them (`close`, `drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from router.core import errors
from router.core.config import RequestLimits
from router.core.errors import RouterError
from router.core.models.contract import Task
from router.core.models.registry import ModelRegistry, ServedModel
from router.core.scheduling.admission import QUEUE_FULL
from router.core.services.accounting import log_shards, timing_of, usage_of
from router.core.services.types import CallContext, InputUsage, Timing, Usage
from router.core.services.validation import check_characters, check_sizes
from router.core.text.windows import Split, Window
from router.observability import metrics, tracing

# Bigger ones are tokenized in parts of this many texts: about 50 ms each here at a few hundred tokens a text.
TOKENIZE_PART_TEXTS = 256


class Checks(Protocol):
    """What every request brings into the pipeline (Embed, Rerank and Generate alike)."""

    field: str
    """The request field its text comes from, for error paths (`inputs`, `documents`, `messages`)."""

    def validate(self, served: ServedModel, limits: RequestLimits) -> None:
        """Check the request against the model's contract and the limits; raise RouterError."""
        ...

    def size(self) -> int:
        """Characters of text the request holds."""
        ...


class Job(Checks, Protocol):
    """An encoder request: its checks, and how it tokenizes."""

    def count(self) -> int:
        """Texts (inputs, documents) the job tokenizes, in parts."""
        ...

    def tokenize(self, served: ServedModel, limits: RequestLimits, part: slice) -> list[Split]:
        """Cut the job's texts in `part` into the model's sequences (may run in a worker thread)."""
        ...


@dataclass
class Scheduled:
    """A job's sequences, computed: one output row per window, windows in split order."""

    served: ServedModel
    splits: list[Split]
    windows: list[Window]
    rows: np.ndarray
    usage: Usage
    timing: Timing
    version: str
    """The model version that answered (the next one, if the request's was unloaded mid-request)."""

    def inputs(self) -> list[InputUsage]:
        """What became of each input, in input order."""
        return [InputUsage(s.tokens, s.truncated, len(s.windows)) for s in self.splits]

    def per_split(self) -> Sequence[tuple[int, int]]:
        """[start, end) of each split's windows in `windows` and `rows`."""
        bounds, start = [], 0
        for split in self.splits:
            bounds.append((start, start + len(split.windows)))
            start += len(split.windows)
        return bounds


class RequestPipeline:
    def __init__(self, registry: ModelRegistry, limits: RequestLimits) -> None:
        # The pipeline spreads tokenizing over its own worker threads (`tokenizing_threads`): the
        # `tokenizers` library's thread pool on top would oversubscribe the cores, and its idle workers
        # spin. (Read by the library at each batch call; a deployer's own setting is kept.)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.registry = registry
        self.limits = limits
        self.active = 0
        """Requests inside the pipeline now."""
        self._closing = False
        self._refused_retry_s = 1.0
        self.refused_back_by = 0.0
        """When the callers refused while closing were told to come back, the latest (time.monotonic())."""
        self._tokenizing = asyncio.Semaphore(limits.tokenizing_threads)
        self.tokenizing_characters = 0
        """Characters of big requests being tokenized or waiting for a thread (admission counts them)."""
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(self, model: str, task: Task, call: CallContext, job: Job, version: str = "") -> Scheduled:
        """`version`: the model version the caller pins (empty: the one served)."""
        with self.inside():
            return await self._run(model, task, call, job, version)

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Count a request as inside the router (Generate's streams too); refuse it while shutting down."""
        if self._closing:
            self.refused_back_by = max(self.refused_back_by, time.monotonic() + self._refused_retry_s)
            raise RouterError(errors.SHUTTING_DOWN, "the router is shutting down", retry_after_s=self._refused_retry_s)
        self.active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active -= 1
            if not self.active:
                self._idle.set()

    def enter(self, model: str, task: Task, checks: Checks, version: str = "") -> tuple[ServedModel, int]:
        """Every request's first steps: resolve the model (and version), check the request against its
        contract and the limits. Returns the model and the request's characters of text."""
        served = self.registry.get(model, task, version)
        checks.validate(served, self.limits)
        size = checks.size()
        check_characters(checks.field, size, self.limits)
        return served, size

    async def _run(self, model: str, task: Task, call: CallContext, job: Job, version: str) -> Scheduled:
        started = time.monotonic()
        served, size = self.enter(model, task, job, version)
        contract = served.contract
        served.scheduler.precheck(call.tenant, call.deadline, call.criticality)
        splits = await self._tokenize(served, job, size)
        tokens = check_sizes(job.field, splits, self.limits, contract.max_sequence_length, contract.name)
        tokenized = time.monotonic()
        windows = [w for s in splits for w in s.windows]
        tracing.note(sequences=len(windows), tokens=tokens, tokenize_ms=round((tokenized - started) * 1000, 3))
        rows, ticket = await served.scheduler.run(
            windows, call.tenant, call.deadline, pinned=bool(version), criticality=call.criticality
        )
        log_shards(ticket.shards)
        return Scheduled(
            served,
            splits,
            windows,
            rows,
            usage_of(splits, tokens, ticket),
            timing_of(started, tokenized, ticket, time.monotonic()),
            ticket.handed_to or contract.version,
        )

    async def _tokenize(self, served: ServedModel, job: Job, size: int) -> list[Split]:
        """Small jobs on the event loop; big ones in worker threads, part by part, at most
        `tokenizing_threads` parts at once across requests (first come, first served, so one huge request
        does not hold the threads while small ones wait), and a caller that goes away stops its
        tokenizing at the next part. The characters waiting are bounded (`max_tokenizing_characters`): past
        that, a big request is refused at once, RESOURCE_EXHAUSTED QUEUE_FULL with a retry delay; one
        request alone is always let in."""
        count = job.count()
        if size <= self.limits.inline_tokenize_characters:
            return job.tokenize(served, self.limits, slice(0, count))
        backlog = self.limits.max_tokenizing_characters
        if self.tokenizing_characters and self.tokenizing_characters + size > backlog:
            metrics.SHED.labels(served.contract.name, QUEUE_FULL).inc()
            raise RouterError(
                QUEUE_FULL,
                f"{self.tokenizing_characters} characters are waiting to be tokenized; the limit is {backlog}",
                retry_after_s=1.0,
                metadata={"tokenizing_characters": str(self.tokenizing_characters), "limit": str(backlog)},
            )
        self.tokenizing_characters += size
        splits: list[Split] = []
        try:
            for start in range(0, count, TOKENIZE_PART_TEXTS):
                async with self._tokenizing:
                    part = slice(start, min(count, start + TOKENIZE_PART_TEXTS))
                    splits += await asyncio.to_thread(job.tokenize, served, self.limits, part)
        finally:
            self.tokenizing_characters -= size
        return splits

    def close(self, retry_after_s: float = 1.0) -> None:
        """Stop admitting: new requests get UNAVAILABLE, told to come back after `retry_after_s`."""
        self._closing = True
        self._refused_retry_s = retry_after_s

    async def drain(self, grace_s: float) -> bool:
        """Wait up to `grace_s` for the requests inside to finish; True if they all did."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True
