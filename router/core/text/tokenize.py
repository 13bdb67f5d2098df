"""Tokenize with the model's own tokenizer and cut texts into sequences that fit the model.

Windowing is the `tokenizers` library's own: `Encoding.truncate(max_length, stride, direction)` leaves
the rest of a long text in `Encoding.overflowing`, consecutive windows sharing `stride` tokens, and
`Tokenizer.post_process` adds the model's special tokens to each window. Texts are encoded without
truncation, so the router always knows a text's true length. Texts are encoded with their special tokens
at once (the common case: a text that fits is then one window as it stands); one that does not fit is
encoded again without them and cut.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from router.core.models.contract import Truncation
from router.core.text.windows import Frame, Query, Split, Window, cut

# Pad tokens by convention, tried in this order when the tokenizer's padding settings name none.
_PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<|padding|>")


class ModelTokenizer:
    """A model's tokenizer with padding and truncation off: the router decides both."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        padding = tokenizer.padding
        self._padding_id: int | None = padding["pad_id"] if padding else None
        self.shipped_max_length: int | None = (tokenizer.truncation or {}).get("max_length")
        """The length the tokenizer file itself truncates at (turned off here; `router check` compares it)."""
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self.single_specials = tokenizer.num_special_tokens_to_add(is_pair=False)
        self.pair_specials = tokenizer.num_special_tokens_to_add(is_pair=True)
        self._single_type_ids = any(tokenizer.encode("a").type_ids)
        """Whether the post-processor gives a single text non-zero type ids (a template's `$A:1`): if not,
        a single text's window carries none (the adapter pads them with 0)."""
        self._frames: dict[tuple[str, ...], Frame] = {}

    @classmethod
    def from_file(cls, path: Path) -> ModelTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def pad_id(self, token: str | None = None) -> int:
        """The id rows are padded with: `token`'s when given, else the tokenizer's padding settings', else
        a conventional pad token's. Raise ValueError when there is none (the model is then not served)."""
        if token is not None:
            found = self._tokenizer.token_to_id(token)
            if found is None:
                raise ValueError(f"pad token {token!r} is not in the tokenizer's vocabulary")
            return found
        if self._padding_id is not None:
            return self._padding_id
        for candidate in _PAD_TOKENS:
            found = self._tokenizer.token_to_id(candidate)
            if found is not None:
                return found
        raise ValueError("the tokenizer has no pad token; name one with modelrouter.pad_token")

    @property
    def raw(self) -> Tokenizer:
        """The `tokenizers` object itself (Generate's streaming decoder steps through it)."""
        return self._tokenizer

    def encode_prompt(self, text: str) -> list[int]:
        """A generation prompt's ids, with the special tokens the tokenizer adds (as transformers does)."""
        return self._tokenizer.encode(text).ids

    def token_id(self, token: str) -> int:
        found = self._tokenizer.token_to_id(token)
        if found is None:
            raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary")
        return found

    def count(self, texts: Sequence[str]) -> list[int]:
        """Token counts with special tokens, as the model would see each text whole."""
        return [
            len(e.ids) + self.single_specials
            for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ]

    def split(
        self,
        texts: Sequence[str],
        max_length: int,
        truncation: Truncation,
        overlap: int,
        max_windows: int | None = None,
        prefix: str = "",
        offsets: bool = True,
    ) -> list[Split]:
        """Cut each text into sequences of at most `max_length` tokens, special tokens included.

        CHUNK: windows sharing `overlap` tokens (at most `max_windows`, from the start); END: the head;
        START: the tail; NONE: a text that does not fit comes back with no windows (`too_long`).
        A `prefix` (an input type's, from the contract) is tokenized on its own and put before the text
        of every window; its tokens count in `Split.tokens`, and window offsets stay the text's.
        Without `offsets` (a caller that never reads where a window lies), a text that fits in one window
        has start and end 0.
        """
        lead = self._tokenizer.encode(prefix, add_special_tokens=False) if prefix else None
        room = max_length - self.single_specials - (len(lead.ids) if lead else 0)
        if room < 1:
            raise ValueError(f"max_length {max_length} leaves no room for text")
        if lead is not None:
            return [self._cut(e, room, truncation, overlap, max_windows, lead) for e in self._encode(texts)]
        splits = []
        for text, whole in zip(texts, self._encode(texts, special_tokens=True, offsets=offsets), strict=True):
            ids = whole.ids
            if len(ids) <= max_length:
                splits.append(Split(len(ids), (self._whole_window(whole, ids, offsets, self._single_type_ids),)))
            else:
                [content] = self._encode([text])
                splits.append(self._cut(content, room, truncation, overlap, max_windows))
        return splits

    @staticmethod
    def _whole_window(whole: Encoding, ids: list[int], offsets: bool, type_ids: bool) -> Window:
        """A text that fits, as the one window it is (its special tokens included). Type ids are left out
        when all are 0 (the padding the adapter would give them); without `type_ids` they are not read."""
        start = end = 0
        if offsets:
            mask, spans = whole.special_tokens_mask, whole.offsets
            if 0 in mask:  # else no content token: an empty text
                first, last = mask.index(0), len(mask) - 1 - mask[::-1].index(0)
                start, end = spans[first][0], spans[last][1]
        types = whole.type_ids if type_ids else None
        return Window(
            np.array(ids, dtype=np.int64), np.array(types, dtype=np.int64) if types and any(types) else None, start, end
        )

    def _cut(
        self,
        content: Encoding,
        room: int,
        truncation: Truncation,
        overlap: int,
        max_windows: int | None,
        lead: Encoding | None = None,
    ) -> Split:
        tokens = len(content.ids) + self.single_specials + (len(lead.ids) if lead else 0)
        window = self._single_window if lead is None else functools.partial(self._single_window, lead=lead)
        return cut(content, tokens, room, truncation, overlap, max_windows, window)

    def _single_window(self, piece: Encoding, lead: Encoding | None = None) -> Window:
        text = piece if lead is None else Encoding.merge([lead, piece], growing_offsets=False)
        return self._window(self._tokenizer.post_process(text), piece)

    def _encode(self, texts: Sequence[str], special_tokens: bool = False, offsets: bool = True) -> list[Encoding]:
        """Without special tokens unless asked; without `offsets`, the library's faster batch call that
        leaves every offset 0 (about 13% less CPU here). One text with offsets is encoded directly (where
        the library's own thread pool is on, its batch call costs more than it saves)."""
        if not offsets:
            return self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=special_tokens)
        if len(texts) == 1:
            return [self._tokenizer.encode(texts[0], add_special_tokens=special_tokens)]
        return self._tokenizer.encode_batch(list(texts), add_special_tokens=special_tokens)

    def query(self, text: str, cap: int) -> Query:
        """Encode a rerank query and keep its first `cap` tokens."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        tokens = len(encoding.ids)
        if tokens > cap:
            encoding.truncate(cap, direction="right")
        return Query(encoding, tokens, tokens > cap)

    def frame(self, template: tuple[str, str, str]) -> Frame:
        """A contract's `pair_template` (head, middle, tail), tokenized once."""
        frame = self._frames.get(template)
        if frame is None:
            head, middle, tail = (self._tokenizer.encode(text, add_special_tokens=False) for text in template)
            frame = self._frames[template] = Frame(head, middle, tail)
        return frame

    def pair_overhead(self, template: tuple[str, str, str] = ()) -> int:
        """Tokens every window of a pair holds besides query and document: special tokens, and the template's."""
        return self.single_specials + self.frame(template).tokens if template else self.pair_specials

    def split_pairs(
        self,
        query: Query,
        documents: Sequence[str],
        max_length: int,
        truncation: Truncation,
        overlap: int,
        max_windows: int | None = None,
        template: tuple[str, str, str] = (),
    ) -> list[Split]:
        """Cut each (query, document) pair into sequences of at most `max_length` tokens.

        Every window holds the whole (capped) query, a slice of the document and the special tokens; its
        offsets are character offsets into the document. `Split.tokens` counts the pair whole. With a
        `template` (an LLM reranker's prompt), each window is head + query + middle + slice + tail,
        processed as one sequence.
        """
        frame = self.frame(template) if template else None
        overhead = self.pair_overhead(template)
        room = max_length - overhead - query.kept
        if room < 1:
            raise ValueError(f"a query of {query.kept} tokens leaves no room in {max_length}")
        return [
            self._cut_pair(query, e, room, overhead, truncation, overlap, max_windows, frame)
            for e in self._encode(documents)
        ]

    def _cut_pair(
        self,
        query: Query,
        document: Encoding,
        room: int,
        overhead: int,
        truncation: Truncation,
        overlap: int,
        max_windows: int | None,
        frame: Frame | None,
    ) -> Split:
        tokens = query.tokens + len(document.ids) + overhead
        window = functools.partial(self._pair_window, query, frame=frame)
        return cut(document, tokens, room, truncation, overlap, max_windows, window)

    def _pair_window(self, query: Query, piece: Encoding, frame: Frame | None) -> Window:
        if frame is not None:
            pieces = [frame.head, query.encoding, frame.middle, piece, frame.tail]
            prompt = Encoding.merge(pieces, growing_offsets=False)
            return self._window(self._tokenizer.post_process(prompt), piece)
        # Each piece is processed on its own: the library's pair processing of overflowing pieces
        # marks the document's tokens with type id 0 (seen with tokenizers 0.23).
        return self._window(self._tokenizer.post_process(query.encoding, piece), piece)

    @staticmethod
    def _window(processed: Encoding, content: Encoding) -> Window:
        offsets = content.offsets
        start, end = (offsets[0][0], offsets[-1][1]) if offsets else (0, 0)
        return Window(
            ids=np.asarray(processed.ids, dtype=np.int64),
            type_ids=np.asarray(processed.type_ids, dtype=np.int64),
            start=start,
            end=end,
        )
