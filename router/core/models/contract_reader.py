"""Reading a model's contract: its `modelrouter.*` config parameters (the table in contract.py) into a
ModelContract. Whatever is missing, malformed or inconsistent is refused with BAD_MODEL_CONTRACT naming
the key, so a deployer's mistake surfaces where the model is loaded (and in `router check`), never as a
wrong answer later.
"""

from __future__ import annotations

import json

from router.core.errors import BAD_MODEL_CONTRACT, RouterError
from router.core.models.contract import (
    GENERATE_OPTIONS,
    INPUT_TYPES,
    POOLINGS,
    PREFIX,
    SCORE_TYPES,
    ModelContract,
    ModelDescription,
    Task,
    TensorSpec,
    Truncation,
)


def _contract_error(model: str, message: str) -> RouterError:
    return RouterError(BAD_MODEL_CONTRACT, f"model {model!r}: {message}")


def _truncation(model: str, value: str) -> Truncation:
    try:
        return Truncation(value.strip().upper())
    except ValueError:
        raise _contract_error(model, f"unknown truncation {value!r}") from None


def _int_list(model: str, key: str, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise _contract_error(model, f"{PREFIX}{key} must be a comma list of integers") from None


def _integer(model: str, key: str, value: str | None, minimum: int) -> int | None:
    """An integer parameter of at least `minimum` (1 or 0), or None when unset."""
    if value is None or not value.strip():
        return None
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise _contract_error(model, f"{PREFIX}{key} must be a {kind} integer")
    return number


def _fraction(model: str, key: str, value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise _contract_error(model, f"{PREFIX}{key} must be a number from 0 to 1")
    return number


def _query_cap(model: str, max_len: int, value: str | None) -> int:
    cap = _integer(model, "max_query_tokens", value, 1) or max_len // 4
    # Leave the document at least half the window, whatever the query.
    if cap > max_len // 2:
        raise _contract_error(model, f"{PREFIX}max_query_tokens must be at most half of max_sequence_length")
    return cap


def is_routed(description: ModelDescription) -> bool:
    """Models without `modelrouter.task` are left alone (helpers, ensembles' steps...)."""
    return f"{PREFIX}task" in description.parameters


def parse_contract(description: ModelDescription) -> ModelContract:
    """Interpret a model's `modelrouter.*` parameters; raise RouterError naming what is wrong."""
    name = description.name
    params = {k[len(PREFIX) :]: v for k, v in description.parameters.items() if k.startswith(PREFIX)}
    task, max_len = _task_and_length(name, params)
    output = _output(description, params)
    pooling = params.get("pooling", "mean").strip().lower()
    if pooling not in POOLINGS:
        raise _contract_error(name, f"{PREFIX}pooling must be one of {', '.join(POOLINGS)}")
    score_column = int(_integer(name, "score_column", params.get("score_column"), 0) or 0)
    width = output.dims[-1] if output.dims else -1
    if task is Task.RERANK and width > 0 and score_column >= width:
        raise _contract_error(name, f"{PREFIX}score_column {score_column} is outside output {output.name!r} ({width})")
    default_truncation, truncations = _truncations(name, task, params)
    return ModelContract(
        name=name,
        version=description.version,
        task=task,
        tokenizer_file=params["tokenizer"],
        max_sequence_length=max_len,
        max_batch_size=max(1, description.max_batch_size),
        input_names=tuple(spec.name for spec in description.inputs),
        output_name=output.name,
        output_dims=output.dims,
        default_truncation=default_truncation,
        truncations=truncations,
        pooling=pooling,
        normalize=params.get("normalize", "true").strip().lower() in ("1", "true", "yes"),
        dimensions=_int_list(name, "dimensions", params.get("dimensions", "")),
        max_batch_tokens=_integer(name, "max_batch_tokens", params.get("max_batch_tokens"), 1),
        min_batch_fill=_fraction(name, "min_batch_fill", params.get("min_batch_fill")),
        max_query_tokens=_query_cap(name, max_len, params.get("max_query_tokens")),
        score_column=score_column,
        pad_token=params.get("pad_token") or None,
        chat_template_file=params.get("chat_template") or None,
        end_tokens=_names(params.get("end_tokens", "")),
        generate_options=_options(name, params.get("generate_options", "")),
        score_type=_choice(name, "score", params.get("score", "logit"), SCORE_TYPES),
        input_prefixes=_prefixes(name, params.get("input_prefixes", "")),
        quantization_range=_positive(name, "quantization_range", params.get("quantization_range", "1")),
        pair_template=_pair_template(name, task, params.get("pair_template", "")),
        priority_levels=description.priority_levels,
    )


def _task_and_length(name: str, params: dict[str, str]) -> tuple[Task, int]:
    try:
        task = Task(params.get("task", "").strip().lower())
    except ValueError:
        raise _contract_error(name, f"unknown task {params.get('task')!r}") from None
    for key in ("tokenizer", "max_sequence_length"):
        if not params.get(key):
            raise _contract_error(name, f"parameter {PREFIX}{key} is missing")
    try:
        return task, int(params["max_sequence_length"])
    except ValueError:
        raise _contract_error(name, f"{PREFIX}max_sequence_length is not an integer") from None


def _output(description: ModelDescription, params: dict[str, str]) -> TensorSpec:
    """The output the router reads: `modelrouter.output`, or the first declared; the model must take
    input_ids."""
    name = description.name
    if "input_ids" not in (spec.name for spec in description.inputs):
        raise _contract_error(name, "the model has no input_ids input")
    if not description.outputs:
        raise _contract_error(name, "the model declares no output")
    wanted = params.get("output")
    outputs = {spec.name: spec for spec in description.outputs}
    if wanted and wanted not in outputs:
        raise _contract_error(name, f"output {wanted!r} is not declared")
    return outputs[wanted] if wanted else description.outputs[0]


def _truncations(name: str, task: Task, params: dict[str, str]) -> tuple[Truncation, frozenset[Truncation]]:
    """The default truncation and the allowed ones. A prompt is never chunked: it fits, is cut from its
    oldest side on request (START), or is refused."""
    generate = task is Task.GENERATE
    default_truncation = _truncation(name, params.get("default_truncation", "NONE" if generate else "CHUNK"))
    allowed = params.get("truncations")
    truncations = (
        frozenset(_truncation(name, part) for part in allowed.split(",") if part.strip())
        if allowed
        else frozenset({Truncation.NONE, Truncation.START} if generate else Truncation)
    )
    if default_truncation not in truncations:
        raise _contract_error(name, "default_truncation is not among the allowed truncations")
    return default_truncation, truncations


def _pair_template(model: str, task: Task, value: str) -> tuple[str, str, str]:
    if not value:
        return ()
    if task is not Task.RERANK:
        raise _contract_error(model, f"{PREFIX}pair_template is for rerank models only")
    head, query, rest = value.partition("{query}")
    middle, document, tail = rest.partition("{document}")
    if not query or not document or "{query}" in rest or "{document}" in head + tail:
        raise _contract_error(model, f"{PREFIX}pair_template must hold {{query}} and then {{document}}, once each")
    return head, middle, tail


def _choice(model: str, key: str, value: str, allowed: tuple[str, ...]) -> str:
    chosen = value.strip().lower()
    if chosen not in allowed:
        raise _contract_error(model, f"{PREFIX}{key} must be one of {', '.join(allowed)}")
    return chosen


def _prefixes(model: str, value: str) -> tuple[tuple[str, str], ...]:
    if not value.strip():
        return ()
    try:
        prefixes = json.loads(value)
    except ValueError:
        prefixes = None
    if not isinstance(prefixes, dict) or not all(isinstance(v, str) for v in prefixes.values()):
        raise _contract_error(model, f"{PREFIX}input_prefixes must be a JSON object of input type to prefix text")
    unknown = set(prefixes) - set(INPUT_TYPES)
    if unknown:
        raise _contract_error(model, f"{PREFIX}input_prefixes: unknown {sorted(unknown)}; known: {list(INPUT_TYPES)}")
    return tuple(sorted(prefixes.items()))


def _positive(model: str, key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise _contract_error(model, f"{PREFIX}{key} must be a positive number")
    return number


def _names(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _options(model: str, value: str) -> frozenset[str]:
    options = frozenset(_names(value))
    unknown = options - GENERATE_OPTIONS
    if unknown:
        raise _contract_error(
            model, f"{PREFIX}generate_options: unknown {sorted(unknown)}; known: {sorted(GENERATE_OPTIONS)}"
        )
    return options
