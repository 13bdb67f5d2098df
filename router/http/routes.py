"""The HTTP API's routes: each turns its body into the core's request, calls the same service a gRPC call
reaches (router/core/services/), and answers in the shape the reference API's clients parse.

- POST /v1/embeddings: OpenAI's embeddings (floats or base64 of little-endian float32);
- POST /v1/chat/completions and /v1/completions: OpenAI's, streamed as server-sent events or not;
- POST /v1/rerank (Cohere v1, Jina) and /v2/rerank (Cohere v2);
- GET /v1/models, /v1/models/{model}: OpenAI's list, of the models the caller may use;
- GET /health: 200 once the router serves (gRPC health SERVING), else 503.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator

import pydantic_core
import structlog
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from router.app import Router
from router.core import errors
from router.core.criticality import Criticality
from router.core.errors import FieldViolation, RouterError
from router.core.models.catalog import MAX_PAGE_SIZE
from router.core.models.contract import Truncation
from router.core.services import types as core
from router.core.services.generate import LENGTH, Delta, Finished
from router.http import problems
from router.http.edge import ClientGone, Edge, HttpCall
from router.http.schemas import (
    ChatRequest,
    CompletionRequest,
    EmbeddingsRequest,
    RerankRequest,
    RerankV2Request,
    Sampling,
)

OWNER = "model-router"
EMBEDDINGS_FIELDS = {"inputs": "input", "encoding": "encoding_format"}
"""The core's field names as OpenAI's embeddings request calls them (for errors' `param`)."""
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""OpenAI's message roles the router takes, as the chat template knows them (`developer` is OpenAI's newer
name for `system`); tool and function messages are refused (the models here call no tools)."""


def json_response(content: object, status: int = 200) -> Response:
    return Response(pydantic_core.to_json(content), status, media_type="application/json")


def _request_id() -> str:
    return structlog.contextvars.get_contextvars().get("request_id", "")


class Routes:
    def __init__(self, router: Router, edge: Edge) -> None:
        self.router = router
        self.edge = edge

    def all(self) -> list[Route]:
        route = self.edge.route
        return [
            route("POST", "/v1/embeddings", "embeddings", EmbeddingsRequest, self.embeddings, EMBEDDINGS_FIELDS),
            route("POST", "/v1/chat/completions", "chat", ChatRequest, self.chat),
            route("POST", "/v1/completions", "completions", CompletionRequest, self.completions),
            route("POST", "/v1/rerank", "rerank", RerankRequest, self.rerank),
            route("POST", "/v2/rerank", "rerank_v2", RerankV2Request, self.rerank),
            route("GET", "/v1/models", "models", None, self.models),
            route("GET", "/v1/models/{model:path}", "model", None, self.model),
            Route("/health", self.health, methods=["GET"]),
        ]

    # Embeddings.

    async def embeddings(self, call: HttpCall, body: EmbeddingsRequest) -> Response:
        if body.user:
            structlog.contextvars.bind_contextvars(user=errors.clip(body.user))
        given = body.input
        if isinstance(given, str):
            texts = [given]
        elif given and isinstance(given[0], int):
            texts = self.router.embed.texts_of_ids(body.model, [given], "input")
        elif given and isinstance(given[0], list):
            texts = self.router.embed.texts_of_ids(body.model, given, "input")
        else:
            texts = given
        request = core.EmbedRequest(
            model=body.model,
            inputs=texts,
            truncation=None if body.truncation is None else Truncation(body.truncation),
            dimensions=body.dimensions,
            input_type=body.input_type,
        )
        result = await self.router.embed.embed(request, call.context)
        vectors = result.embeddings
        if body.encoding_format == "base64":
            rows = vectors.astype("<f4", copy=False)
            embeddings = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
        else:
            embeddings = vectors.tolist()
        call.tokens = result.usage.input_tokens
        return json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
                "model": result.model,
                "usage": {"prompt_tokens": result.usage.input_tokens, "total_tokens": result.usage.input_tokens},
            }
        )

    # Rerank.

    async def rerank(self, call: HttpCall, body: RerankRequest) -> Response:
        if isinstance(body, RerankV2Request):
            if body.max_tokens_per_doc is not None:
                raise problems.unsupported(["max_tokens_per_doc"])
            if body.priority is not None and body.criticality is None:
                asked = Criticality(min(body.priority, Criticality.SHEDDABLE))
                call.context = core.CallContext(
                    call.context.tenant, call.context.deadline, call.caller.criticality(asked)
                )
        documents = body.texts()
        request = core.RerankRequest(
            model=body.model,
            query=body.query,
            documents=documents,
            top_n=body.top_n,
            return_documents=body.return_documents,
            truncation=None if body.truncation is None else Truncation(body.truncation),
            max_chunks_per_doc=body.max_chunks_per_doc,
        )
        result = await self.router.rerank.rerank(request, call.context)
        call.tokens = result.usage.computed_tokens
        results = []
        for ranked in result.results:
            item: dict = {"index": ranked.index, "relevance_score": ranked.score}
            if body.return_documents:
                item["document"] = {"text": documents[ranked.index]}
            results.append(item)
        tokens = result.usage.input_tokens
        return json_response(
            {
                "id": _request_id(),
                "results": results,
                "model": result.model,
                "meta": {"billed_units": {"input_tokens": tokens, "search_units": 1}},
                "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
            }
        )

    # Chat and completions.

    async def chat(self, call: HttpCall, body: ChatRequest) -> Response:
        messages = []
        for i, message in enumerate(body.messages):
            role = ROLES.get(message.role)
            if role is None:
                raise errors.invalid(
                    errors.UNSUPPORTED_OPTION,
                    f"messages with role {message.role!r} are not supported (the models here call no tools)",
                    [FieldViolation(f"messages[{i}].role", "system, developer, user or assistant")],
                )
            messages.append(core.ChatMessage(role, _content(message.content, i)))
        maximum = body.max_completion_tokens or body.max_tokens
        request = _generate_request(body, maximum, messages=tuple(messages))
        return await self._generate(call, body, request, chat=True)

    async def completions(self, call: HttpCall, body: CompletionRequest) -> Response:
        prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        if not prompt:
            raise errors.invalid(errors.INVALID_VALUE, "the prompt is empty", [FieldViolation("prompt", "some text")])
        return await self._generate(call, body, _generate_request(body, body.max_tokens, prompt=prompt), chat=False)

    async def _generate(self, call: HttpCall, body: Sampling, request: core.GenerateRequest, chat: bool) -> Response:
        if body.user:
            structlog.contextvars.bind_contextvars(user=errors.clip(body.user))
        events = self.router.generate.generate(request, call.context)
        shape = _Shape(chat, _request_id(), int(time.time()))
        if not body.stream:
            try:
                return json_response(await _unless_gone(call.request, shape.whole(events, call)))
            finally:
                await events.aclose()
        # The first event before the response starts: a refusal (429, 400...) is still an HTTP status.
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        usage = body.stream_options is not None and body.stream_options.include_usage
        return EventSourceResponse(shape.stream(first, events, call, usage), sep="\n", ping=15)

    # Models and health.

    async def models(self, call: HttpCall, body: None) -> Response:
        listed, token = [], ""
        while True:
            page = self.router.catalog.page(call.caller, None, MAX_PAGE_SIZE, token)
            listed += [_model_card(m.contract.name) for m in page.models]
            token = page.next_token
            if not token:
                break
        return json_response({"object": "list", "data": listed})

    async def model(self, call: HttpCall, body: None) -> Response:
        name = call.request.path_params["model"]
        call.model = name
        served = self.router.catalog.get(name, call.caller)
        return json_response(_model_card(served.contract.name))

    async def health(self, request: Request) -> Response:
        ready = self.router.ready and not self.router.closing
        return json_response({"status": "SERVING" if ready else "NOT_SERVING"}, 200 if ready else 503)


def _model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNER}


def _content(content, index: int) -> str:
    """A message's text: a string, or text parts joined (OpenAI's content array); other parts refused."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise errors.invalid(
                errors.UNSUPPORTED_OPTION,
                f"content parts of type {part.type!r} are not supported (text only)",
                [FieldViolation(f"messages[{index}].content[{j}]", "a text part: {type: text, text: ...}")],
            )
        texts.append(part.text)
    return "".join(texts)


def _generate_request(body: Sampling, max_tokens: int | None, **text) -> core.GenerateRequest:
    return core.GenerateRequest(
        model=body.model,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stops(),
        repetition_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        truncation=None if body.truncation is None else Truncation(body.truncation),
        **text,
    )


async def _unless_gone(request: Request, work):
    """`work`'s result; if the caller disconnects first, `work` is cancelled (a generation stops in Triton)
    and ClientGone raised. (The body is read already: the next message is the disconnect.)"""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():  # the caller left, or the deadline passed: the generation ends before we go on
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task not in done:
        raise ClientGone
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _Shape:
    """OpenAI's response shapes of one generation: chat (`chat.completion`) or completions (`text_completion`)."""

    def __init__(self, chat: bool, request_id: str, created: int) -> None:
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"
        self.created = created
        self.model = ""

    def _envelope(self, kind: str, choices: list, usage: dict | None = None) -> dict:
        body = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    def _choice(self, text: str | None, reason: str | None, first: bool = False, whole: bool = False) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
        if whole:
            return {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None,
            }
        delta = {"role": "assistant", "content": text or ""} if first else ({"content": text} if text else {})
        return {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}

    @staticmethod
    def _usage(done: Finished) -> dict:
        total = done.prompt_tokens + done.completion_tokens
        return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens, "total_tokens": total}

    @staticmethod
    def _reason(done: Finished) -> str:
        return "length" if done.reason == LENGTH else "stop"

    async def whole(self, events: AsyncIterator[Delta | Finished], call: HttpCall) -> dict:
        texts = []
        async for event in events:
            if isinstance(event, Delta):
                texts.append(event.text)
                continue
            self.model = call.model
            call.tokens = event.prompt_tokens + event.completion_tokens
            kind = "chat.completion" if self.chat else "text_completion"
            choice = self._choice("".join(texts), self._reason(event), whole=True)
            return self._envelope(kind, [choice], self._usage(event))
        raise RuntimeError("the generation ended without its last event")

    async def stream(
        self, first: Delta | Finished, events: AsyncIterator[Delta | Finished], call: HttpCall, usage: bool
    ) -> AsyncIterator[dict]:
        """The events as server-sent events' data; an error after the start ends the stream with an error
        event (OpenAI's form), and a caller that leaves closes `events` (the generation stops in Triton)."""
        self.model = call.model
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        try:
            event, started = first, False
            while True:
                if isinstance(event, Finished):
                    call.tokens = event.prompt_tokens + event.completion_tokens
                    if self.chat and not started:
                        yield {"data": _json(self._envelope(kind, [self._choice("", None, first=True)]))}
                    yield {"data": _json(self._envelope(kind, [self._choice(None, self._reason(event))]))}
                    if usage:
                        yield {"data": _json(self._envelope(kind, [], self._usage(event)))}
                    break
                yield {"data": _json(self._envelope(kind, [self._choice(event.text, None, first=not started)]))}
                started = True
                event = await anext(events)
            yield {"data": "[DONE]"}
        except RouterError as error:
            call.status, call.reason = problems.status_of(error), error.reason
            yield {"data": problems.error_event(error)}
        finally:
            await events.aclose()


def _json(content: object) -> str:
    return pydantic_core.to_json(content).decode()
