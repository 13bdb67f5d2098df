"""The one interface between the core and a model server. `adapters/triton` implements it for Triton."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from router.core.contract import ModelDescription


class Backend(Protocol):
    async def is_ready(self) -> bool:
        """Whether the server is live and ready to take requests."""
        ...

    async def describe_models(self) -> list[ModelDescription]:
        """Every model the server has ready, with its config."""
        ...

    async def infer(
        self, model: str, inputs: dict[str, np.ndarray], output: str, timeout_s: float | None
    ) -> np.ndarray:
        """Run one batch; return the named output. Raise RouterError (BACKEND_*) on failure."""
        ...

    async def close(self) -> None: ...
