"""Checks every request shares: limits, truncation against the model's contract, sizes after cutting."""

from __future__ import annotations

from collections.abc import Sized

from router.core import errors
from router.core.config import RequestLimits
from router.core.errors import FieldViolation
from router.core.models.contract import Truncation
from router.core.models.registry import ServedModel
from router.core.text.windows import Split


def check_count(field_name: str, items: Sized, limits: RequestLimits, reason: str) -> None:
    """At least one item, and no more than the limit."""
    if not items:
        raise errors.invalid(reason, f"{field_name} is empty", [FieldViolation(field_name, "give at least one")])
    if len(items) > limits.max_inputs:
        raise errors.invalid(
            errors.TOO_MANY_INPUTS,
            f"{len(items)} {field_name}; the limit is {limits.max_inputs}",
            [FieldViolation(field_name, f"at most {limits.max_inputs} per request")],
            count=len(items),
            max_count=limits.max_inputs,
        )


def check_characters(field_name: str, characters: int, limits: RequestLimits) -> None:
    """No more text than the limit, before any of it is tokenized."""
    if characters > limits.max_characters:
        raise errors.invalid(
            errors.TOO_MANY_CHARACTERS,
            f"{characters} characters of text; the limit is {limits.max_characters}",
            [FieldViolation(field_name, f"at most {limits.max_characters} characters per request")],
            characters=characters,
            max_characters=limits.max_characters,
        )


def check_positive(field_name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise errors.invalid(
            errors.INVALID_VALUE, f"{field_name} must be at least 1", [FieldViolation(field_name, "must be >= 1")]
        )


def resolve_truncation(served: ServedModel, requested: Truncation | None) -> Truncation:
    truncation = requested or served.contract.default_truncation
    if truncation not in served.contract.truncations:
        allowed = ", ".join(sorted(t.value for t in served.contract.truncations))
        raise errors.invalid(
            errors.UNSUPPORTED_OPTION,
            f"model {served.contract.name!r} does not support truncation {truncation.value}",
            [FieldViolation("truncation", f"supported: {allowed}")],
        )
    return truncation


def check_sizes(field_name: str, splits: list[Split], limits: RequestLimits, max_len: int, model: str) -> int:
    """Reject inputs left too long (truncation NONE) and requests over the token cap; return tokens."""
    too_long = [(i, s.tokens) for i, s in enumerate(splits) if s.too_long]
    if too_long:
        violations = [
            FieldViolation(f"{field_name}[{i}]", f"has {n} tokens; model {model!r} accepts at most {max_len}")
            for i, n in too_long
        ]
        # Every violation is kept here; the transport lists as many as fit and counts the rest.
        raise errors.invalid(
            errors.INPUT_TOO_LONG,
            f"{len(too_long)} of {len(splits)} {field_name} exceed {max_len} tokens and truncation is NONE",
            violations,
            model=model,
            max_sequence_length=max_len,
            too_long=len(too_long),
        )
    tokens = sum(s.tokens for s in splits)
    if tokens > limits.max_tokens:
        raise errors.invalid(
            errors.TOO_MANY_TOKENS,
            f"the request holds {tokens} tokens; the limit is {limits.max_tokens}",
            [FieldViolation(field_name, f"at most {limits.max_tokens} tokens in all; split the request")],
            tokens=tokens,
            max_tokens=limits.max_tokens,
        )
    return tokens
