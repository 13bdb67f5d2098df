"""Token rows -> the input tensors a model declares, and the request that carries them. The one place
tensors are built (the backend and the benchmarks' direct clients both use it).

An encoder batch travels as KServe's `ModelInferRequest` with its tensors in `raw_input_contents` (each
one buffer, little-endian), the same message tritonclient sends, built here straight from the padded
arrays: tritonclient's `InferInput`/`InferResult` wrap every tensor in Python objects of their own, which
cost more CPU than the call itself once the model is fast.

Generation models take TensorRT-LLM's tensors (docs/models.md): `input_ids` and `input_lengths`,
`request_output_len`, the sampling values, `end_id`, `pad_id`, one-token `stop_words_list`, `streaming`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from router.core.models.contract import ModelContract
from router.core.text.prompting import Sampling
from router.core.text.windows import Window


def pad_rows(rows: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad int64 rows into one matrix; return it with its attention mask. (One scatter for the whole
    batch: the real tokens are where the mask is set, in row order.)"""
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    kept = np.arange(lengths.max(initial=0)) < lengths[:, None]
    ids = np.full(kept.shape, pad_id, dtype=np.int64)
    ids[kept] = np.concatenate(rows) if len(rows) else ()
    return ids, kept.astype(np.int64)


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


def infer_request(
    contract: ModelContract, rows: Sequence[Window], parameters: dict[str, int] | None = None
) -> service_pb2.ModelInferRequest:
    """The batch as Triton's `ModelInferRequest` for the contract's output; `parameters`: Triton's
    integer request parameters (`priority`, say)."""
    request = service_pb2.ModelInferRequest(
        model_name=contract.name,
        model_version=contract.version,
        outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=contract.output_name)],
    )
    for name, array in input_tensors(contract, rows).items():
        request.inputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    for key, value in (parameters or {}).items():
        request.parameters[key].int64_param = value
    return request


def output_array(response: service_pb2.ModelInferResponse, name: str) -> np.ndarray:
    """The named output of a response, as a numpy array over its raw bytes (read-only, no copy)."""
    for index, output in enumerate(response.outputs):
        if output.name == name:
            dtype = triton_to_np_dtype(output.datatype)
            if dtype is None or dtype == np.object_:
                raise ValueError(f"output {name!r} is {output.datatype}, not a numeric tensor")
            return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(tuple(output.shape))
    raise ValueError(f"the response has no output {name!r}")


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
