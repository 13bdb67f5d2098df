"""Token rows -> the input tensors a model declares. The one place tensors are built (the backend and
the benchmarks' direct clients both use it).

Generation models take TensorRT-LLM's tensors (triton_models/CONTRACTS.md): `input_ids` and `input_lengths`,
`request_output_len`, the sampling values, `end_id`, `pad_id`, one-token `stop_words_list`, `streaming`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router.core.contract import ModelContract
from router.core.prompting import Sampling
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


def stop_words(token_ids: Sequence[int]) -> np.ndarray:
    """TensorRT-LLM's stop_words_list for one-token words: [1, 2, n] (flattened ids, end offsets)."""
    ids = np.array(list(token_ids), np.int32)
    offsets = np.arange(1, len(ids) + 1, dtype=np.int32)
    return np.stack([ids, offsets])[None]


def generation_tensors(prompt: Sequence[int], sampling: Sampling) -> dict[str, np.ndarray]:
    """One request's tensors (batch of 1). Greedy is top_k 1, as TensorRT-LLM reads it."""
    tensors = {
        "input_ids": np.array([list(prompt)], np.int32),
        "input_lengths": np.array([[len(prompt)]], np.int32),
        "request_output_len": np.array([[sampling.max_tokens]], np.int32),
        "streaming": np.array([[True]], np.bool_),
    }
    if sampling.greedy:
        tensors["runtime_top_k"] = np.array([[1]], np.int32)
    else:
        tensors["temperature"] = np.array([[sampling.temperature]], np.float32)
        tensors["runtime_top_k"] = np.array([[sampling.top_k or 0]], np.int32)
        tensors["runtime_top_p"] = np.array([[sampling.top_p if sampling.top_p is not None else 1.0]], np.float32)
    if sampling.seed is not None:
        tensors["random_seed"] = np.array([[sampling.seed]], np.uint64)
    for name in ("repetition_penalty", "presence_penalty", "frequency_penalty"):
        value = getattr(sampling, name)
        if value is not None:
            tensors[name] = np.array([[value]], np.float32)
    if sampling.end_id is not None:
        tensors["end_id"] = np.array([[sampling.end_id]], np.int32)
    if sampling.pad_id is not None:
        tensors["pad_id"] = np.array([[sampling.pad_id]], np.int32)
    if sampling.stop_ids:
        tensors["stop_words_list"] = stop_words(sampling.stop_ids)
    return tensors
