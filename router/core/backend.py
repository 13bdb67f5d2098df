"""The one interface between the core and a model server. `adapters/triton` implements it for Triton.

The core hands over token rows (one `Window` per sequence: ids and type ids, unpadded) and the model's
contract; the adapter pads them with the contract's pad id, builds the tensors the model declares
(`input_ids`, and `attention_mask`, `token_type_ids` when declared), and returns the contract's output
as one row per sequence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from router.core.models.contract import ModelContract, ModelDescription
from router.core.text.prompting import Sampling
from router.core.text.windows import Window


class Answer(NamedTuple):
    """A batch's output, a row per sequence, and the server that answered it (for logs, never callers)."""

    rows: np.ndarray
    shard: str


class Token(NamedTuple):
    """A generated token id, and the server that generated it."""

    id: int
    shard: str


class Backend(Protocol):
    async def is_ready(self) -> bool:
        """Whether the server is live and ready to take requests."""
        ...

    async def describe_models(self) -> list[ModelDescription]:
        """Every model the server has ready, with its config. Raise RouterError BACKEND_UNAVAILABLE when
        no server answered (an empty list means the servers answered and serve nothing)."""
        ...

    async def infer(
        self, contract: ModelContract, rows: Sequence[Window], timeout_s: float | None, priority: int = 0
    ) -> Answer:
        """Run one batch; return the contract's output, a row per sequence, and who answered. `priority`:
        the server's queue priority (1 the highest; 0 its default). Raise RouterError (BACKEND_*) on failure."""
        ...

    def generate(
        self, contract: ModelContract, prompt: Sequence[int], sampling: Sampling, timeout_s: float | None
    ) -> AsyncIterator[Token]:
        """Stream the token ids a generation model produces for `prompt`, one at a time, each with its
        server. Closing the iterator early cancels the request in the model server. Raise RouterError
        (BACKEND_*) on failure."""
        ...

    async def close(self) -> None: ...
