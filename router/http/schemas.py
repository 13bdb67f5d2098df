"""The HTTP API's request bodies, as the clients people hold send them: OpenAI's embeddings, chat and
completions, Cohere's (and Jina's) rerank. Each is a pydantic model, validated straight from the body's
bytes; a wrong type or value is a 400 naming the field (problems.py).

A field the router does not know is never dropped: one that asks for something (a value other than
null, false or an empty list) is a 400 UNSUPPORTED_OPTION naming it (`asked_extras`). Stock clients send
only the fields their caller set, so this refuses what a model cannot do instead of quietly ignoring it.

Fields beyond the reference APIs (marked "extension") are the router's own options: `truncation`,
`input_type`, `criticality`, `max_chunks_per_doc`, `top_k`, `repetition_penalty`. A stock client sends
them with its extra-body hook (the `openai` package's `extra_body=`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

Truncation = Literal["CHUNK", "END", "START", "NONE"]
Criticality = Literal["CRITICAL", "DEFAULT", "SHEDDABLE"]
NonNegative = Annotated[float, Field(ge=0)]


class Body(BaseModel):
    """A request body: unknown fields are kept so that `asked_extras` can name them."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr = ""
    criticality: Criticality | None = None
    """Extension: how much the request matters under overload (the gRPC API's `criticality`)."""

    def asked_extras(self) -> list[str]:
        """Unknown fields that ask for something (neutral values are what clients send for "unset")."""
        return [name for name, value in (self.model_extra or {}).items() if value not in (None, False, [], {}, "")]


class EmbeddingsRequest(Body):
    """POST /v1/embeddings (OpenAI). `input`: a string, strings, or the model's own token ids."""

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(gt=0)] | None = None
    user: StrictStr | None = None
    truncation: Truncation | None = None
    """Extension: what to do with an input longer than the model takes (default: the model's, CHUNK)."""
    input_type: StrictStr | None = None
    """Extension: `query`, `document`... where the model declares a prefix for it."""


class TextPart(BaseModel):
    """A part of a message's content; only text parts are taken."""

    model_config = ConfigDict(extra="allow")

    type: StrictStr
    text: StrictStr | None = None


class Message(BaseModel):
    """A chat message; a field beyond these (`tool_calls`...) is refused by the schema, never dropped."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[TextPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool = False


class Sampling(Body):
    """The generation options chat and completions share; checked against what the model honours."""

    max_tokens: Annotated[int, Field(gt=0)] | None = None
    temperature: NonNegative | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: Literal[1] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    top_k: Annotated[int, Field(gt=0)] | None = None
    """Extension (vLLM's name)."""
    repetition_penalty: float | None = None
    """Extension (vLLM's name)."""
    truncation: Truncation | None = None
    """Extension: a prompt too long for the context: END drops the oldest messages, NONE refuses."""

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class ChatRequest(Sampling):
    """POST /v1/chat/completions (OpenAI)."""

    messages: list[Message]
    max_completion_tokens: Annotated[int, Field(gt=0)] | None = None


class CompletionRequest(Sampling):
    """POST /v1/completions (OpenAI's legacy completions): one prompt."""

    prompt: StrictStr | Annotated[list[StrictStr], Field(min_length=1, max_length=1)]
    echo: Literal[False] | None = None
    best_of: Literal[1] | None = None


class DocumentText(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: StrictStr


class RerankRequest(Body):
    """POST /v1/rerank (Cohere v1, Jina): documents as strings or `{"text": ...}`."""

    query: StrictStr
    documents: list[StrictStr | DocumentText]
    top_n: Annotated[int, Field(gt=0)] | None = None
    return_documents: bool = False
    max_chunks_per_doc: Annotated[int, Field(gt=0)] | None = None
    truncation: Truncation | None = None
    """Extension: what to do with a document longer than the model takes (default: the model's, CHUNK)."""

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankV2Request(RerankRequest):
    """POST /v2/rerank (Cohere v2): documents as strings; `max_tokens_per_doc` cuts each document."""

    max_tokens_per_doc: Annotated[int, Field(gt=0)] | None = None
    priority: Annotated[int, Field(ge=0)] | None = None
    """Cohere's: lower is served earlier. 0 is CRITICAL, 1 DEFAULT, 2 and above SHEDDABLE (unset: DEFAULT)."""


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorResponse(BaseModel):
    """OpenAI's error body: `{"error": {...}}`."""

    error: ErrorBody
