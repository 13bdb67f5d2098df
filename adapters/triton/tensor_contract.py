"""The tensors at the Triton boundary, per kind of model: what the router sends and what it reads back.

One table per kind (docs/models.md prints the same tables for people); `tensor_problems` holds
a model's declared inputs and outputs against its kind's table. The adapter builds exactly these tensors
(adapters/triton/tensors.py), so a model that passes is one Triton will take the router's requests for.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.core.models.contract import ModelContract, ModelDescription, Task, TensorSpec

EMBED = "embed"
RERANK_CROSS_ENCODER = "rerank (cross-encoder)"
RERANK_LLM = "rerank (LLM judgement)"
GENERATE = "generate"


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    """Triton's config type (`TYPE_INT64`...)."""
    dims: str
    """Its dims in config.pbtxt, without the batch axis: `[-1]` a row of tokens, `[1]` one value."""
    required: bool
    """The model must declare it (the others are sent only when declared)."""


_TOKEN_ROWS = (
    Tensor("input_ids", "TYPE_INT64", "[-1]", True),
    Tensor("attention_mask", "TYPE_INT64", "[-1]", False),
    Tensor("token_type_ids", "TYPE_INT64", "[-1]", False),
)

# TensorRT-LLM's `tensorrt_llm` model's names (tensorrtllm_backend), the subset the router sends.
_GENERATE_INPUTS = (
    Tensor("input_ids", "TYPE_INT32", "[-1]", True),
    Tensor("input_lengths", "TYPE_INT32", "[1]", True),
    Tensor("request_output_len", "TYPE_INT32", "[1]", True),
    Tensor("end_id", "TYPE_INT32", "[1]", False),
    Tensor("pad_id", "TYPE_INT32", "[1]", False),
    Tensor("stop_words_list", "TYPE_INT32", "[2, -1]", False),
    Tensor("streaming", "TYPE_BOOL", "[1]", False),
    Tensor("runtime_top_k", "TYPE_INT32", "[1]", False),
    Tensor("temperature", "TYPE_FP32", "[1]", False),
    Tensor("runtime_top_p", "TYPE_FP32", "[1]", False),
    Tensor("random_seed", "TYPE_UINT64", "[1]", False),
    Tensor("repetition_penalty", "TYPE_FP32", "[1]", False),
    Tensor("presence_penalty", "TYPE_FP32", "[1]", False),
    Tensor("frequency_penalty", "TYPE_FP32", "[1]", False),
)
_GENERATE_OUTPUTS = (Tensor("output_ids", "TYPE_INT32", "[-1, -1]", True),)

# The input each generate option is sent in: a model that declares the option must declare the tensor.
OPTION_TENSORS = {
    "temperature": "temperature",
    "top_p": "runtime_top_p",
    "top_k": "runtime_top_k",
    "seed": "random_seed",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


def kind_of(contract: ModelContract) -> str:
    if contract.task is Task.RERANK:
        return RERANK_LLM if contract.pair_template else RERANK_CROSS_ENCODER
    return EMBED if contract.task is Task.EMBED else GENERATE


def inputs_of(kind: str) -> tuple[Tensor, ...]:
    return _GENERATE_INPUTS if kind == GENERATE else _TOKEN_ROWS


def tensor_problems(description: ModelDescription, contract: ModelContract) -> list[str]:
    """What in the model's declared tensors the router's requests would not fit, one sentence each."""
    kind = kind_of(contract)
    problems: list[str] = []
    if description.max_batch_size < 1:
        problems.append(
            "max_batch_size is 0: the router sends every tensor with a batch axis; declare max_batch_size >= 1"
        )
    expected = {tensor.name: tensor for tensor in inputs_of(kind)}
    declared = {spec.name: spec for spec in description.inputs}
    for tensor in expected.values():
        if tensor.required and tensor.name not in declared:
            problems.append(f"input {tensor.name!r} ({tensor.datatype}, dims {tensor.dims}) is missing")
    for spec in description.inputs:
        tensor = expected.get(spec.name)
        if tensor is None:
            if not _optional(description, spec):
                problems.append(
                    f"input {spec.name!r} is required by the model but the router never sends it "
                    f"({kind} models get {', '.join(expected)})"
                )
            continue
        problems += _mismatch("input", spec, tensor)
    problems += _output_problems(description, contract, kind)
    if kind == GENERATE:
        if not description.decoupled:
            problems.append(
                "a generate model must be decoupled (model_transaction_policy { decoupled: true }): "
                "the router streams its responses"
            )
        for option in sorted(contract.generate_options):
            if OPTION_TENSORS[option] not in declared:
                problems.append(
                    f"modelrouter.generate_options declares {option!r} but the model has no "
                    f"{OPTION_TENSORS[option]!r} input to take it"
                )
    return problems


def _optional(description: ModelDescription, spec: TensorSpec) -> bool:
    return spec.name in description.optional_inputs


def _mismatch(what: str, spec: TensorSpec, tensor: Tensor) -> list[str]:
    problems = []
    if spec.datatype != tensor.datatype:
        problems.append(f"{what} {spec.name!r} is {spec.datatype or 'untyped'}; the router uses {tensor.datatype}")
    rank = tensor.dims.count(",") + 1
    if len(spec.dims) != rank:
        dims = "[" + ", ".join(str(d) for d in spec.dims) + "]"
        problems.append(f"{what} {spec.name!r} has dims {dims}; the router's are {tensor.dims} (batch axis aside)")
    return problems


def _output_problems(description: ModelDescription, contract: ModelContract, kind: str) -> list[str]:
    outputs = {spec.name: spec for spec in description.outputs}
    if kind == GENERATE:
        problems = []
        for tensor in _GENERATE_OUTPUTS:
            if tensor.name not in outputs:
                problems.append(f"output {tensor.name!r} ({tensor.datatype}, dims {tensor.dims}) is missing")
            else:
                problems += _mismatch("output", outputs[tensor.name], tensor)
        return problems
    spec = outputs[contract.output_name]
    if spec.datatype != "TYPE_FP32":
        return [f"output {spec.name!r} is {spec.datatype}; the router reads TYPE_FP32"]
    if len(spec.dims) != 1:
        what = "one pooled vector per row" if kind == EMBED else "one row of scores per (query, window)"
        dims = "[" + ", ".join(str(d) for d in spec.dims) + "]"
        return [f"output {spec.name!r} has dims {dims}; the router reads {what}: dims [n] (batch axis aside)"]
    return []
