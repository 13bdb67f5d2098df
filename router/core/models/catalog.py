"""The models as resources: one by name, or a page of them at a time, as the caller may see them."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from router.core import errors
from router.core.auth import Caller
from router.core.models.contract import Task
from router.core.models.registry import ModelRegistry, ServedModel

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_TOKEN_PREFIX = "after:"


@dataclass(frozen=True)
class Page:
    models: list[ServedModel]
    unusable: list[tuple[str, str]]
    """(name, problem) of models the router refuses: all of them, on the first page only."""
    next_token: str
    """Empty on the last page."""


def page_token(after: str) -> str:
    """An opaque token for the page after the model named `after` (names are sorted, so a model added
    or removed between pages shifts nothing already listed)."""
    return base64.urlsafe_b64encode((_TOKEN_PREFIX + after).encode()).decode()


def _after(token: str) -> str:
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    if not text.startswith(_TOKEN_PREFIX):
        raise errors.invalid(
            errors.INVALID_VALUE,
            "page_token is not one this router gave out",
            [errors.FieldViolation("page_token", "pass next_page_token of the previous page, or nothing")],
        )
    return text[len(_TOKEN_PREFIX) :]


class Catalog:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def get(self, name: str, caller: Caller) -> ServedModel:
        """The model named `name`; MODEL_REQUIRED, MODEL_NOT_FOUND (and the like) or MODEL_NOT_ALLOWED."""
        served = self.registry.lookup(name, field="name")
        caller.check_model(name)
        return served

    def page(self, caller: Caller, task: Task | None, size: int, token: str) -> Page:
        if size < 0:
            raise errors.invalid(
                errors.INVALID_VALUE,
                f"page_size must not be negative, got {size}",
                [errors.FieldViolation("page_size", f"0 (up to {DEFAULT_PAGE_SIZE}) to {MAX_PAGE_SIZE}")],
            )
        size = min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _after(token) if token else None
        allows = caller.principal.allows
        listed = [
            m
            for m in self.registry.models()
            if allows(m.contract.name)
            and (task is None or m.contract.task is task)
            and (after is None or m.contract.name > after)
        ]
        models = listed[:size]
        more = len(listed) > size
        unusable = (
            [(name, problem) for name, problem in sorted(self.registry.problems.items()) if allows(name)]
            if after is None
            else []
        )
        return Page(models, unusable, page_token(models[-1].contract.name) if more else "")
