"""Token rows -> the input tensors a model declares. The one place tensors are built (the backend and
the benchmarks' direct clients both use it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router.core.contract import ModelContract
from router.core.tokenize import Window


def pad_rows(rows: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad int64 rows into one matrix; return it with its attention mask."""
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def input_tensors(contract: ModelContract, rows: Sequence[Window]) -> dict[str, np.ndarray]:
    """`input_ids` padded with the contract's pad id, plus `attention_mask` and `token_type_ids` when
    the model declares them (type ids padded with 0, as tokenizers pad them)."""
    pad_id = 0 if contract.pad_id is None else contract.pad_id
    ids, mask = pad_rows([row.ids for row in rows], pad_id)
    tensors = {"input_ids": ids}
    if "attention_mask" in contract.input_names:
        tensors["attention_mask"] = mask
    if "token_type_ids" in contract.input_names:
        type_ids = [row.type_ids if row.type_ids is not None else np.zeros(row.length, np.int64) for row in rows]
        tensors["token_type_ids"], _ = pad_rows(type_ids, 0)
    return tensors
