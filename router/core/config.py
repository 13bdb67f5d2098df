"""The core's knobs, each with its one default. `router/settings.py` exposes them as settings and takes
its defaults from here; nothing else repeats a number.

Every config checks itself when built, naming the knob that is wrong, so a bad value stops the router
at start-up instead of hanging requests later (`max_inflight_batches=0` would never dispatch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

CORES = max(2, len(os.sched_getaffinity(0)))
"""The CPUs this process may use (at least 2): how many threads tokenize big requests at once."""


def _check(config: object, rules: dict[str, tuple[str, object]]) -> None:
    """`rules`: field -> (comparison, bound), e.g. ("gt", 0); None values pass (they mean "unset")."""
    for name, (op, bound) in rules.items():
        value = getattr(config, name)
        if value is None:
            continue
        ok = {"gt": value > bound, "ge": value >= bound, "le": value <= bound}[op]
        if not ok:
            words = {"gt": "greater than", "ge": "at least", "le": "at most"}[op]
            raise ValueError(f"{name} must be {words} {bound} (got {value!r})")


@dataclass(frozen=True)
class BatchingConfig:
    """How one model's scheduler forms batches and sends them."""

    max_batch_tokens: int = 8192
    """Padded tokens (rows x longest row) per batch; a model's config may set its own."""
    max_inflight_batches: int = 2
    """Batches sent to the backend at once for one model; more pile up in the queue and pack better."""
    min_batch_fill: float = 0.0
    """Least share of real (unpadded) tokens in a batch. On a CPU, where padding is the whole cost, 0.8
    or so; on a GPU, 0. A model's config may set its own."""
    max_batch_wait_s: float = 0.0
    """While other batches are in flight, hold a batch that would leave less than full up to this long
    for more work to join; an idle model never waits. A few ms on a GPU, 0 on a CPU."""
    timeout_s: float | None = 60.0
    """Backend timeout for one batch (the callers' deadlines shorten it)."""

    def __post_init__(self) -> None:
        _check(
            self,
            {
                "max_batch_tokens": ("gt", 0),
                "max_inflight_batches": ("gt", 0),
                "min_batch_fill": ("ge", 0.0),
                "max_batch_wait_s": ("ge", 0.0),
                "timeout_s": ("gt", 0.0),
            },
        )
        _check(self, {"min_batch_fill": ("le", 1.0), "max_batch_wait_s": ("le", 1.0)})


@dataclass(frozen=True)
class AdmissionConfig:
    """What one model's scheduler lets in (router/core/scheduling/admission.py)."""

    enabled: bool = True
    """Off: every request is queued whatever the queue holds, and kept there past its deadline until its
    caller goes away: a plain proxy, for comparison only."""
    max_queued_tokens: int | None = None
    """Tokens waiting per model; unset: 4 x the model's max batch size x its max sequence length."""
    max_queued_requests: int = 256
    """Requests waiting per model."""
    shed_on_deadline: bool = True
    """Refuse at once a request whose deadline the measured drain rate says it cannot meet."""
    overload_ratio: float = 1.3
    """The model is overloaded while work arrives (requests per second over `overload_window_s`, times
    their mean tokens) more than this many times as fast as the model drains it when kept busy: its
    queue grows, rather than merely being long."""
    overload_window_s: float = 3.0
    """The window over which the arrival rate is measured."""
    queue_delay_target_s: float = 0.15
    """While overloaded, a new request is admitted only if the work ahead of it drains within this: the
    queue stays short, not full, and admitted calls are answered fast."""
    queue_delay_deadline_share: float = 0.1
    """While overloaded, a request may still wait this share of its own deadline when that is longer than
    the target: a caller that gives 60 s tolerates a queue that one giving 2 s does not. A request
    without a deadline is bounded by the queue bounds only."""

    def __post_init__(self) -> None:
        _check(
            self,
            {
                "max_queued_tokens": ("gt", 0),
                "max_queued_requests": ("gt", 0),
                "overload_ratio": ("gt", 1.0),
                "overload_window_s": ("gt", 0.0),
                "queue_delay_target_s": ("gt", 0.0),
                "queue_delay_deadline_share": ("ge", 0.0),
            },
        )
        _check(self, {"queue_delay_deadline_share": ("le", 1.0)})

    def queue_tokens_for(self, max_batch_size: int, max_sequence_length: int) -> int:
        return self.max_queued_tokens or 4 * max_batch_size * max_sequence_length


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask, checked before any work is queued."""

    max_inputs: int = 10_000
    """Inputs (Embed) or documents (Rerank) in one request."""
    max_tokens: int = 2_000_000
    """Tokens in one request, counted before truncation."""
    max_characters: int = 8_000_000
    """Characters of text in one request, checked before tokenizing (so a huge request costs nothing but
    its bytes): about max_tokens' worth of English at 4 characters a token."""
    chunk_overlap: int = 32
    """Tokens shared by consecutive windows of a chunked input (capped at half a window)."""
    max_tokenizing_characters: int = 32_000_000
    """Characters of big requests being tokenized or waiting to be, across requests; past it new big
    requests are refused with a retry delay (so a flood cannot pile up text in memory)."""
    tokenizing_threads: int = CORES
    """Parts of big requests tokenized at once, in worker threads (the rest wait their turn): one per CPU
    the process may use, at least 2."""
    inline_tokenize_characters: int = 4096
    """Requests with at most this many characters are tokenized on the event loop, bigger ones in worker
    threads, which run beside the loop on other cores (the tokenizer releases the interpreter lock). The
    hop costs some CPU per text and buys throughput on a machine with cores to spare (measured with the
    model made free: bench/FINDINGS.md, The router's own cost); a few short texts cost less on the loop."""

    def __post_init__(self) -> None:
        _check(
            self,
            {
                "max_inputs": ("gt", 0),
                "max_tokens": ("gt", 0),
                "max_characters": ("gt", 0),
                "chunk_overlap": ("ge", 0),
                "tokenizing_threads": ("gt", 0),
                "inline_tokenize_characters": ("ge", 0),
                "max_tokenizing_characters": ("gt", 0),
            },
        )


def default(config: type, name: str) -> object:
    """The default of one knob, for the settings that expose it."""
    for f in fields(config):
        if f.name == name:
            return f.default
    raise KeyError(name)
