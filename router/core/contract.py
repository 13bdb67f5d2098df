"""A model's contract, read from its Triton model repository.

A deployer describes a model to the router only in the model's own `config.pbtxt`, with `parameters`
whose keys start with `modelrouter.`, and a tokenizer file beside it. Triton reports the config (so the
router learns it even from a remote server); the tokenizer file is read from the router's copy of the
repository (`model_repository` setting).

| key                               | meaning                                                   | default    |
|-----------------------------------|-----------------------------------------------------------|------------|
| `modelrouter.task`                | `embed`, `rerank` or `generate`; models without it are not served | required |
| `modelrouter.tokenizer`           | HF `tokenizers` JSON file, relative to the model folder   | required   |
| `modelrouter.max_sequence_length` | longest sequence in tokens, special tokens included       | required   |
| `modelrouter.default_truncation`  | `CHUNK`, `END`, `START` or `NONE`                         | `CHUNK`    |
| `modelrouter.truncations`         | comma list of the modes the model accepts                 | all four   |
| `modelrouter.pooling`             | `mean`, `cls`, `max` or `last`: how windows combine (pooling.py) | `mean` |
| `modelrouter.normalize`           | embed: L2-normalise unless the request says otherwise     | `true`     |
| `modelrouter.dimensions`          | embed: comma list of Matryoshka lengths a request may ask | full only  |
| `modelrouter.output`              | the output tensor to read                                 | first one  |
| `modelrouter.score_column`        | rerank: the output's score column (two logits: 1)         | 0          |
| `modelrouter.pad_token`           | the token rows are padded with                            | tokenizer's |
| `modelrouter.max_query_tokens`    | rerank: a longer query is cut to this (or rejected: NONE) | length / 4 |
| `modelrouter.max_batch_tokens`    | padded tokens per batch, tuned to the serving hardware    | settings   |
| `modelrouter.chat_template`       | generate: Jinja chat template file, relative to the folder | none (prompts only) |
| `modelrouter.end_tokens`          | generate: comma list of tokens that end an answer (first: `end_id`) | required |
| `modelrouter.generate_options`    | generate: comma list of the sampling options honoured     | none       |
| `modelrouter.min_batch_fill`      | least share of real tokens in a padded batch (0 to 1)     | settings   |
| `modelrouter.score`               | rerank: what a score is: `logit`, `probability` or `similarity` | `logit` |
| `modelrouter.input_prefixes`      | embed: JSON object, input type to the text put before each window | none |
| `modelrouter.quantization_range`  | embed: r of the int8 and uint8 encodings (beyond +-r clips) | 1 |
| `modelrouter.pair_template`       | rerank by an LLM: the prompt, `{query}` then `{document}` once each | none |

A rerank model with a `pair_template` gets each (query, document window) as that prompt, tokenized
piece by piece (the text around the placeholders, the query, the window) with the tokenizer's
single-sequence special tokens; without one, as the tokenizer's own sentence pair (`[CLS] q [SEP] d [SEP]`).

Input types are `query`, `document`, `classification` and `clustering` (INPUT_TYPES); E5's would be
`{"query": "query: ", "document": "passage: "}`.

Input tensors are recognised by name: `input_ids` (required), `attention_mask` and `token_type_ids`
(sent when the model declares them). Rows are padded with the tokenizer's own pad token (its padding
settings, else a `[PAD]`-like token; `modelrouter.pad_token` names it otherwise): a model whose
tokenizer has none and whose config names none is not served.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from router.core.errors import BAD_MODEL_CONTRACT, RouterError

PREFIX = "modelrouter."


class Task(enum.Enum):
    EMBED = "embed"
    RERANK = "rerank"
    GENERATE = "generate"


# Every `modelrouter.*` key the router reads (the table above); `router check` flags any other as a typo.
KEYS = frozenset(
    {
        "task", "tokenizer", "max_sequence_length", "default_truncation", "truncations", "pooling", "normalize",
        "dimensions", "output", "score_column", "pad_token", "max_query_tokens", "max_batch_tokens",
        "chat_template", "end_tokens", "generate_options", "min_batch_fill", "score", "input_prefixes",
        "quantization_range", "pair_template",
    }
)  # fmt: skip

POOLINGS = ("mean", "cls", "max", "last")
SCORE_TYPES = ("logit", "probability", "similarity")
INPUT_TYPES = ("query", "document", "classification", "clustering")

# The sampling options of a generate request that a model may declare (`modelrouter.generate_options`).
GENERATE_OPTIONS = frozenset(
    {"temperature", "top_p", "top_k", "seed", "repetition_penalty", "presence_penalty", "frequency_penalty"}
)


class Truncation(enum.Enum):
    """What to do with a sequence longer than the model takes."""

    CHUNK = "CHUNK"
    END = "END"
    START = "START"
    NONE = "NONE"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelDescription:
    """What a backend reports of one loaded model, before the router interprets it."""

    name: str
    version: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: dict[str, str]
    served_by: tuple[str, ...]
    versions: tuple[str, ...] = ()
    """Every version some server holds ready, newest first (`version` is the newest)."""
    optional_inputs: frozenset[str] = frozenset()
    """Inputs the config marks `optional: true` (a request may leave them out)."""
    decoupled: bool = False
    """The model may answer a request with any number of responses (a stream)."""
    older: tuple[ModelDescription, ...] = ()
    """The older versions some server holds ready, each described as it is configured, newest first."""


@dataclass(frozen=True)
class ModelContract:
    name: str
    version: str
    task: Task
    tokenizer_file: str
    max_sequence_length: int
    max_batch_size: int
    input_names: tuple[str, ...]
    output_name: str
    output_dims: tuple[int, ...]
    default_truncation: Truncation
    truncations: frozenset[Truncation]
    pooling: str
    normalize: bool
    dimensions: tuple[int, ...]
    max_batch_tokens: int | None = None
    min_batch_fill: float | None = None
    max_query_tokens: int = 0
    score_column: int = 0
    """Rerank: the column of the output row that holds the score."""
    pad_token: str | None = None
    """The token to pad with, when the config names one (else the tokenizer's own)."""
    pad_id: int | None = None
    """The pad token's id: filled in from the model's tokenizer when the model is loaded."""
    chat_template_file: str | None = None
    """Generate: the chat template beside the config (none: the model takes plain prompts only)."""
    end_tokens: tuple[str, ...] = ()
    """Generate: tokens that end an answer; the first is the model's `end_id`."""
    generate_options: frozenset[str] = frozenset()
    """Generate: the GenerateRequest sampling options the model honours."""
    score_type: str = "logit"
    """Rerank: what a score is (SCORE_TYPES)."""
    input_prefixes: tuple[tuple[str, str], ...] = ()
    """Embed: (input type, the text put before each window of such an input), for the types declared."""
    quantization_range: float = 1.0
    """Embed: r of the int8 and uint8 encodings (quantize.py)."""
    pair_template: tuple[str, str, str] = ()
    """Rerank by an LLM: the prompt's text before the query, between query and document, and after it."""

    def prefix(self, input_type: str) -> str:
        return dict(self.input_prefixes)[input_type]

    @property
    def embedding_dimensions(self) -> int:
        return self.output_dims[-1] if self.output_dims and self.output_dims[-1] > 0 else 0

    @property
    def wants_attention_mask(self) -> bool:
        return "attention_mask" in self.input_names

    @property
    def wants_token_type_ids(self) -> bool:
        return "token_type_ids" in self.input_names


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
    try:
        task = Task(params.get("task", "").strip().lower())
    except ValueError:
        raise _contract_error(name, f"unknown task {params.get('task')!r}") from None
    for key in ("tokenizer", "max_sequence_length"):
        if not params.get(key):
            raise _contract_error(name, f"parameter {PREFIX}{key} is missing")
    try:
        max_len = int(params["max_sequence_length"])
    except ValueError:
        raise _contract_error(name, f"{PREFIX}max_sequence_length is not an integer") from None

    input_names = tuple(spec.name for spec in description.inputs)
    if "input_ids" not in input_names:
        raise _contract_error(name, "the model has no input_ids input")
    if not description.outputs:
        raise _contract_error(name, "the model declares no output")
    wanted = params.get("output")
    outputs = {spec.name: spec for spec in description.outputs}
    if wanted and wanted not in outputs:
        raise _contract_error(name, f"output {wanted!r} is not declared")
    output = outputs[wanted] if wanted else description.outputs[0]

    pooling = params.get("pooling", "mean").strip().lower()
    if pooling not in POOLINGS:
        raise _contract_error(name, f"{PREFIX}pooling must be one of {', '.join(POOLINGS)}")
    score_column = int(_integer(name, "score_column", params.get("score_column"), 0) or 0)
    width = output.dims[-1] if output.dims else -1
    if task is Task.RERANK and width > 0 and score_column >= width:
        raise _contract_error(name, f"{PREFIX}score_column {score_column} is outside output {output.name!r} ({width})")

    # A prompt is never chunked: it fits, is cut from its oldest side on request (START), or is refused.
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

    return ModelContract(
        name=name,
        version=description.version,
        task=task,
        tokenizer_file=params["tokenizer"],
        max_sequence_length=max_len,
        max_batch_size=max(1, description.max_batch_size),
        input_names=input_names,
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
    )


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
