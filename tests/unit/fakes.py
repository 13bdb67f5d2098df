"""Fakes behind the core's interfaces: a tiny real tokenizer, a backend with a model index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from router.core.backend import Answer
from router.core.errors import RouterError
from router.core.models.contract import ModelDescription, TensorSpec

WORDS = ["alpha", "beta", "gamma", "delta", "query", "document"]


def write_tokenizer(path: Path, pad: str | None = "[PAD]") -> Path:
    """A word-level tokenizer with BERT-style specials; `pad` first in the vocabulary (id 0) unless None.
    Its pad token is deliberately not id 0 when given: [UNK]=0, [PAD]=1 ..."""
    specials = ["[UNK]", *([pad] if pad else []), "[CLS]", "[SEP]"]
    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def description(name: str, task: str = "embed", served_by=("shard-a",), **parameters: str) -> ModelDescription:
    inputs = [TensorSpec("input_ids", "TYPE_INT64", (-1,)), TensorSpec("attention_mask", "TYPE_INT64", (-1,))]
    if task == "rerank":
        inputs.append(TensorSpec("token_type_ids", "TYPE_INT64", (-1,)))
    width = int(parameters.pop("width", "4"))
    return ModelDescription(
        name=name,
        version="1",
        max_batch_size=8,
        inputs=tuple(inputs),
        outputs=(TensorSpec("out", "TYPE_FP32", (width,)),),
        parameters={
            "modelrouter.task": task,
            "modelrouter.tokenizer": "tokenizer.json",
            "modelrouter.max_sequence_length": "16",
            **{f"modelrouter.{k}": v for k, v in parameters.items()},
        },
        served_by=tuple(served_by),
    )


class IndexBackend:
    """A backend whose model index the test sets (or breaks), and whose rows are [n, id sum, pad seen...]."""

    def __init__(self, descriptions: list[ModelDescription]) -> None:
        self.descriptions = descriptions
        self.index_down = False
        self.gate = None
        self.calls: list = []

    async def is_ready(self) -> bool:
        return not self.index_down

    async def describe_models(self) -> list[ModelDescription]:
        if self.index_down:
            raise RouterError("BACKEND_UNAVAILABLE", "down", retry_after_s=1.0)
        return list(self.descriptions)

    async def infer(self, contract, rows, timeout_s, priority=0):
        self.calls.append((contract, rows))
        if self.gate is not None:
            await self.gate.wait()
        width = contract.output_dims[-1]
        out = np.zeros((len(rows), width), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i, :] = float(row.ids.sum())
            if width > 1:
                out[i, -1] = -float(row.ids.sum())  # the last column differs, to tell columns apart
        return Answer(out, "fake")

    async def close(self) -> None: ...
