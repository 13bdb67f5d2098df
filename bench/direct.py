"""A careful client straight to Triton, for the benchmarks' baselines: the model's contract read from
Triton as the router reads it, the same tokenizer, and the adapter's own tensor building, so the only
thing a direct path lacks is the router."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from adapters.triton.backend import TritonBackend
from router.core.models.contract import ModelContract
from router.core.models.contract_reader import parse_contract
from router.core.text.tokenize import ModelTokenizer, Window
from router.settings import PROJECT_ROOT

REPOSITORY = PROJECT_ROOT / "triton_models" / "repository"


class DirectClient:
    def __init__(self, address: str, model: str) -> None:
        self.backend = TritonBackend([address], retries=0)
        self.model = model
        self.contract: ModelContract | None = None
        self.tokenizer: ModelTokenizer | None = None

    async def start(self) -> DirectClient:
        await self.backend.fleet.refresh()  # one look at the server; no discovery running beside the baseline
        [description] = [d for d in await self.backend.describe_models() if d.name == self.model]
        contract = parse_contract(description)
        self.tokenizer = ModelTokenizer.from_file(REPOSITORY / self.model / contract.tokenizer_file)
        self.contract = dataclasses.replace(contract, pad_id=self.tokenizer.pad_id(contract.pad_token))
        return self

    async def infer(self, rows: Sequence[Window]) -> np.ndarray:
        return (await self.backend.infer(self.contract, rows, None)).rows

    async def close(self) -> None:
        await self.backend.close()
