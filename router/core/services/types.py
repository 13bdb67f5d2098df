"""Requests and results as the core sees them, free of any transport."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from router.core.criticality import Criticality
from router.core.models.contract import Truncation
from router.core.text.quantize import Encoding


@dataclass(frozen=True)
class CallContext:
    """Who is calling and until when: the tenant (call metadata x-tenant-id), the caller's deadline
    as a time.monotonic() value (None: the caller set none), and how much the request matters."""

    tenant: str = ""
    deadline: float | None = None
    criticality: Criticality = Criticality.DEFAULT


NO_CALL_CONTEXT = CallContext()
"""For calls from inside the process: no tenant, no deadline."""


@dataclass
class Usage:
    input_tokens: int = 0
    computed_tokens: int = 0
    sequences: int = 0
    batches: int = 0
    inputs_truncated: int = 0
    inputs_chunked: int = 0
    padded_tokens: int = 0
    cached_sequences: int = 0


@dataclass
class Timing:
    """Seconds spent in each stage of one request."""

    tokenize: float = 0.0
    queue: float = 0.0
    inference: float = 0.0
    total: float = 0.0


class InputUsage(NamedTuple):
    """What became of one input: its tokens before any cut, whether it was cut, its windows. (A named
    tuple: one is made per input.)"""

    tokens: int
    truncated: bool
    windows: int


@dataclass(frozen=True)
class EmbedRequest:
    model: str
    inputs: list[str]
    truncation: Truncation | None = None
    normalize: bool | None = None
    dimensions: int | None = None
    encoding: Encoding = Encoding.FLOAT
    input_type: str | None = None
    """One of contract.INPUT_TYPES, or None for the text as it is."""
    version: str = ""
    """The model version the caller pins (empty: the one served)."""


@dataclass
class EmbedResult:
    model: str
    embeddings: np.ndarray
    """One row per input, in `encoding` (quantize.encode)."""
    usage: Usage = field(default_factory=Usage)
    timing: Timing = field(default_factory=Timing)
    version: str = ""
    encoding: Encoding = Encoding.FLOAT
    dimensions: int = 0
    inputs: list[InputUsage] = field(default_factory=list)


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    top_n: int | None = None
    return_documents: bool = False
    truncation: Truncation | None = None
    max_chunks_per_doc: int | None = None
    version: str = ""
    """The model version the caller pins (empty: the one served)."""


@dataclass(frozen=True)
class RankedDocument:
    index: int
    score: float
    window_start: int
    window_end: int
    """The best window's place in the document, in code points."""
    document: str | None = None
    usage: InputUsage | None = None
    window_start_utf8: int = 0
    window_end_utf8: int = 0
    """The same place in UTF-8 bytes."""


@dataclass
class RerankResult:
    model: str
    results: list[RankedDocument]
    query_truncated: bool = False
    usage: Usage = field(default_factory=Usage)
    timing: Timing = field(default_factory=Timing)
    version: str = ""


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat: `role` (system, user, assistant) and its text."""

    role: str
    content: str


@dataclass(frozen=True)
class GenerateRequest:
    """A Generate call: a `prompt` or chat `messages`, and the options checked against the model (prompting.py)."""

    model: str
    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    truncation: Truncation | None = None
