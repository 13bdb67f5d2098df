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
from dataclasses import dataclass

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
    priority_levels: int = 0
    """Priority levels its server's queue keeps (Triton: `dynamic_batching.priority_levels`; 0: none)."""
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
    priority_levels: int = 0
    """Priority levels the model server's queue keeps: a batch asks for the level of its most critical
    request (1 the highest), so critical work also goes first in the server's own queue. 0: none."""

    def priority(self, criticality: int) -> int:
        """The server priority for a batch whose most critical request has `criticality` (0 critical,
        1 default, 2 sheddable); 0 (the server's default) when the model keeps no levels."""
        return min(criticality + 1, self.priority_levels) if self.priority_levels else 0

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
