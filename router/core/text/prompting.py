"""Generate's request checks, before anything reaches a model: options the model honours, values in range,
the prompt rendered with the model's chat template, and the context guard.

The model's config declares the sampling options it honours (`modelrouter.generate_options`); a request
that sets any other one is refused by name rather than served without it. A prompt and `max_tokens` must
fit the model's context: refused with the numbers by default, or, when the caller asks
(truncation START), cut from the oldest side: whole chat messages (a system message stays), or a plain
prompt's oldest tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jinja2.sandbox import ImmutableSandboxedEnvironment

from router.core import errors
from router.core.errors import FieldViolation
from router.core.models.contract import GENERATE_OPTIONS, ModelContract, Truncation
from router.core.services.types import ChatMessage, GenerateRequest

ROLES = ("system", "user", "assistant")
MAX_STOPS = 16
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class Sampling:
    """What the model is asked to do with a prompt, in the core's terms (the adapter builds the tensors)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    end_id: int | None = None
    stop_ids: tuple[int, ...] = ()
    """One-token stops besides `end_id` (the model's other end tokens)."""
    pad_id: int | None = None

    @property
    def greedy(self) -> bool:
        return not self.temperature or self.top_k == 1


@dataclass(frozen=True)
class Prompt:
    """A prompt that fits: its token ids, and what was cut to make it fit."""

    ids: tuple[int, ...]
    max_tokens: int
    dropped_tokens: int = 0
    dropped_messages: int = 0


@dataclass
class _Checks:
    violations: list[FieldViolation] = field(default_factory=list)

    def range(self, name: str, value: float | None, low: float, high: float, low_open: bool = False) -> None:
        if value is None:
            return
        too_low = value <= low if low_open else value < low
        if too_low or value > high or value != value:  # NaN fails every comparison but this one
            bound = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
            self.violations.append(FieldViolation(name, f"must be in {bound}; got {errors.echo(value)}"))


def check_request(contract: ModelContract, request: GenerateRequest) -> None:
    """Options the model does not honour, values out of range, prompt and messages: one error naming each."""
    unsupported = sorted(_set(request) - contract.generate_options)
    if unsupported:
        honoured = ", ".join(sorted(contract.generate_options)) or "none"
        raise errors.invalid(
            errors.UNSUPPORTED_OPTION,
            f"model {contract.name!r} does not support {', '.join(unsupported)}",
            [FieldViolation(name, f"not supported by {contract.name!r}; it takes: {honoured}") for name in unsupported],
            model=contract.name,
        )
    checks = _Checks()
    if bool(request.prompt) == bool(request.messages):
        checks.violations.append(FieldViolation("prompt", "set exactly one of prompt and messages"))
    if request.messages and not contract.chat_template_file:
        checks.violations.append(FieldViolation("messages", f"model {contract.name!r} has no chat template"))
    for i, message in enumerate(request.messages):
        if message.role not in ROLES:
            allowed = ", ".join(ROLES)
            checks.violations.append(
                FieldViolation(f"messages[{i}].role", f"must be one of {allowed}; got {errors.echo(message.role)}")
            )
    if request.max_tokens is not None and request.max_tokens < 1:
        checks.violations.append(FieldViolation("max_tokens", f"must be at least 1; got {request.max_tokens}"))
    checks.range("temperature", request.temperature, 0.0, 2.0)
    checks.range("top_p", request.top_p, 0.0, 1.0, low_open=True)
    checks.range("top_k", request.top_k, 1, 1_000_000)
    checks.range("repetition_penalty", request.repetition_penalty, 0.0, 10.0, low_open=True)
    checks.range("presence_penalty", request.presence_penalty, -2.0, 2.0)
    checks.range("frequency_penalty", request.frequency_penalty, -2.0, 2.0)
    if len(request.stop) > MAX_STOPS:
        checks.violations.append(FieldViolation("stop", f"at most {MAX_STOPS} stop strings; got {len(request.stop)}"))
    for i, stop in enumerate(request.stop[:MAX_STOPS]):
        if not stop or len(stop) > MAX_STOP_CHARS:
            checks.violations.append(FieldViolation(f"stop[{i}]", f"must hold 1 to {MAX_STOP_CHARS} characters"))
    if request.truncation not in (None, Truncation.NONE, Truncation.START):
        checks.violations.append(
            FieldViolation("truncation", "Generate takes TRUNCATION_NONE or TRUNCATION_START (cut the oldest part)")
        )
    if checks.violations:
        raise errors.invalid(
            errors.INVALID_VALUE,
            f"{len(checks.violations)} invalid field(s): {', '.join(v.field for v in checks.violations[:5])}",
            checks.violations,
        )


def _set(request: GenerateRequest) -> set[str]:
    """The sampling options the request sets."""
    return {name for name in GENERATE_OPTIONS if getattr(request, name) is not None}


_ENVIRONMENT = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)


class ChatTemplate:
    """A model's Jinja chat template, rendered in a sandbox (it is the deployer's file, not code to trust)."""

    def __init__(self, source: str) -> None:
        self._template = _ENVIRONMENT.from_string(source)

    def render(self, messages: Sequence[ChatMessage]) -> str:
        return self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True
        )


def fit_context(
    request: GenerateRequest,
    context: int,
    encode: Callable[[str], list[int]],
    template: ChatTemplate | None,
) -> Prompt:
    """The prompt's ids, cut if the request allows it, so that prompt + max_tokens fit `context`."""
    cut = request.truncation is Truncation.START
    messages = list(request.messages)
    dropped_messages = 0
    while True:
        text = template.render(messages) if messages and template else request.prompt
        ids = encode(text)
        wanted = request.max_tokens or 0
        room = context - len(ids)
        if room >= max(1, wanted):
            return Prompt(tuple(ids), wanted or room, dropped_messages=dropped_messages)
        if not cut:
            raise _too_long(len(ids), wanted, context)
        if messages:
            # The oldest message that is not the system message goes first; the last one always stays.
            droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]
            if droppable:
                del messages[droppable[0]]
                dropped_messages += 1
                continue
            raise _too_long(len(ids), wanted, context, "even the system message and the last message alone")
        keep = context - max(1, wanted)
        return Prompt(tuple(ids[len(ids) - keep :]), wanted or context - keep, dropped_tokens=len(ids) - keep)


def _too_long(prompt: int, wanted: int, context: int, what: str = "") -> errors.RouterError:
    need = f"{prompt} prompt tokens + {wanted} max_tokens" if wanted else f"{prompt} prompt tokens + 1 to generate"
    message = f"{need} exceed the model's context of {context} tokens"
    if what:
        message += f" ({what} do not fit)"
    return errors.invalid(
        errors.CONTEXT_TOO_LONG,
        message,
        [
            FieldViolation("prompt", f"{prompt} tokens; the context holds {context}"),
            FieldViolation("max_tokens", f"{wanted or 'unset'}; at most {max(0, context - prompt)} are left"),
        ],
        prompt_tokens=prompt,
        max_tokens=wanted,
        context=context,
    )


class StopMatcher:
    """Finds stop strings in streamed text, across token boundaries, exactly as if matched on the whole text.

    `feed` returns the text safe to send now and the stop that matched, if one did. Text from the first
    place a stop string might start is held back until more text decides; a match counts once no stop
    could still begin earlier. On a match, everything from the stop string on is dropped (never sent)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        if not self.stops:
            return text, None
        buffer = self._held + text
        match = self._first_match(buffer)
        pending = self._first_partial(buffer)
        if match is not None and (pending is None or match[0] <= pending):
            self._held = ""
            return buffer[: match[0]], match[1]
        cut = len(buffer) if pending is None else pending
        self._held = buffer[cut:]
        return buffer[:cut], None

    def flush(self) -> tuple[str, str | None]:
        """At the end of the stream: what was held back, up to a stop it holds (and that stop)."""
        held, self._held = self._held, ""
        match = self._first_match(held)
        return (held, None) if match is None else (held[: match[0]], match[1])

    def _first_match(self, buffer: str) -> tuple[int, str] | None:
        found = [(at, stop) for stop in self.stops if (at := buffer.find(stop)) >= 0]
        return min(found, key=lambda f: (f[0], -len(f[1]))) if found else None

    def _first_partial(self, buffer: str) -> int | None:
        """The first position from which the rest of the buffer is a proper prefix of some stop."""
        longest = max(len(stop) for stop in self.stops)
        for at in range(max(0, len(buffer) - longest + 1), len(buffer)):
            tail = buffer[at:]
            if any(len(stop) > len(tail) and stop.startswith(tail) for stop in self.stops):
                return at
        return None
