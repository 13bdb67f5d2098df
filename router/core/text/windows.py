"""What tokenizing makes of a text: its windows (`Window`), the text cut to fit (`Split`), a rerank query
cut to its cap (`Query`) and a prompt template's frame (`Frame`); and the one routine that cuts a text or
a document to the room a model has (`cut`), by the `tokenizers` library's own windowing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from tokenizers import Encoding

from router.core.models.contract import Truncation


class Window(NamedTuple):
    """One sequence for the model: token ids with special tokens, and where it lies in the text. (A named
    tuple, as `Split`: one of each is made per text, and a tuple is the cheapest immutable record.)"""

    ids: np.ndarray
    type_ids: np.ndarray | None
    start: int
    end: int

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Query:
    """A rerank query, cut to its cap: `tokens` is its full length without special tokens."""

    encoding: Encoding
    tokens: int
    truncated: bool

    @property
    def kept(self) -> int:
        return len(self.encoding.ids)


@dataclass(frozen=True)
class Frame:
    """A rerank prompt template (contract `pair_template`), tokenized: the text around query and document."""

    head: Encoding
    middle: Encoding
    tail: Encoding

    @property
    def tokens(self) -> int:
        return len(self.head.ids) + len(self.middle.ids) + len(self.tail.ids)


class Split(NamedTuple):
    """A text cut to fit: `tokens` is its full length with special tokens, before any cut."""

    tokens: int
    windows: tuple[Window, ...]
    truncated: bool = False

    @property
    def chunked(self) -> bool:
        return len(self.windows) > 1

    @property
    def too_long(self) -> bool:
        """Set when truncation NONE left the text whole although it does not fit."""
        return not self.windows


def stride(overlap: int, room: int) -> int:
    """Windows must advance: keep the overlap below half a window."""
    return max(0, min(overlap, room // 2))


def cut(
    content: Encoding,
    tokens: int,
    room: int,
    truncation: Truncation,
    overlap: int,
    max_windows: int | None,
    window: Callable[[Encoding], Window],
) -> Split:
    """`content` (a text's or a document's tokens, `tokens` in all with what surrounds it) cut to `room`
    as `truncation` says, each piece made a window by `window`: whole when it fits; NONE: no window (the
    caller refuses it); CHUNK: overlapping windows, at most `max_windows` (the rest counted as truncated);
    END or START: the head or the tail."""
    if len(content.ids) <= room:
        return Split(tokens, (window(content),))
    if truncation is Truncation.NONE:
        return Split(tokens, ())
    if truncation is Truncation.CHUNK:
        content.truncate(room, stride=stride(overlap, room), direction="right")
        pieces = [content, *content.overflowing]
        kept = pieces[:max_windows] if max_windows is not None else pieces
        return Split(tokens, tuple(window(piece) for piece in kept), len(kept) < len(pieces))
    content.truncate(room, direction="right" if truncation is Truncation.END else "left")
    return Split(tokens, (window(content),), True)
