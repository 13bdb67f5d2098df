"""Tokenizing and cutting into windows, with the model's real tokenizer file."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.corpus import TOKENIZER, text_of
from router.core.models.contract import Truncation
from router.core.text.tokenize import ModelTokenizer

CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def tokenizer() -> ModelTokenizer:
    return ModelTokenizer.from_file(TOKENIZER)


def content(window) -> list[int]:
    ids = window.ids.tolist()
    assert ids[0] == CLS and ids[-1] == SEP
    return ids[1:-1]


def test_shipped_truncation_at_128_is_off(tokenizer):
    text = text_of(300, random.Random(0))
    [split] = tokenizer.split([text], 512, Truncation.NONE, overlap=0)
    assert split.tokens == 302
    assert split.windows[0].length == 302


def test_short_text_is_one_window_with_specials(tokenizer):
    [split] = tokenizer.split(["hello world"], 256, Truncation.CHUNK, overlap=32)
    assert not split.chunked and not split.truncated
    assert split.windows[0].ids.tolist()[0] == CLS and split.windows[0].ids.tolist()[-1] == SEP
    assert (split.windows[0].start, split.windows[0].end) == (0, len("hello world"))


def test_none_leaves_long_text_unsplit(tokenizer):
    [split] = tokenizer.split([text_of(300, random.Random(1))], 256, Truncation.NONE, overlap=0)
    assert split.too_long and split.tokens == 302


def test_end_keeps_head_and_start_keeps_tail(tokenizer):
    text = text_of(400, random.Random(2))
    whole = tokenizer.split([text], 1024, Truncation.NONE, overlap=0)[0].windows[0]
    [end] = tokenizer.split([text], 128, Truncation.END, overlap=0)
    [start] = tokenizer.split([text], 128, Truncation.START, overlap=0)
    assert end.truncated and start.truncated
    assert content(end.windows[0]) == content(whole)[:126]
    assert content(start.windows[0]) == content(whole)[-126:]
    assert end.windows[0].start == 0 and start.windows[0].end == len(text)


@settings(max_examples=40, deadline=None)
@given(tokens=st.integers(1, 1500), max_length=st.integers(8, 300), overlap=st.integers(0, 64), seed=st.integers())
def test_chunk_windows_fit_overlap_and_cover_everything(tokenizer, tokens, max_length, overlap, seed):
    text = text_of(tokens, random.Random(seed))
    whole = content(tokenizer.split([text], 4096, Truncation.NONE, overlap=0)[0].windows[0])
    [split] = tokenizer.split([text], max_length, Truncation.CHUNK, overlap=overlap)
    room = max_length - 2
    stride = min(overlap, room // 2)
    assert split.tokens == tokens + 2
    assert all(w.length <= max_length for w in split.windows)
    # Stitch the windows back, dropping each window's overlap with the previous one: the text, whole.
    stitched = content(split.windows[0])
    for window in split.windows[1:]:
        piece = content(window)
        assert piece[:stride] == stitched[len(stitched) - stride :]
        stitched += piece[stride:]
    assert stitched == whole
    assert split.chunked == (tokens > room)
    assert split.windows[0].start == 0 and split.windows[-1].end == len(text)


def test_max_windows_caps_and_reports(tokenizer):
    text = text_of(1000, random.Random(3))
    [split] = tokenizer.split([text], 128, Truncation.CHUNK, overlap=16, max_windows=3)
    assert len(split.windows) == 3 and split.truncated


def test_ids_are_int64(tokenizer):
    [split] = tokenizer.split(["a b c"], 16, Truncation.CHUNK, overlap=0)
    assert split.windows[0].ids.dtype == np.int64


def test_a_prefix_leads_every_window_and_counts_in_the_tokens(tokenizer):
    text = text_of(600, random.Random(5))
    lead = tokenizer.split(["query: "], 64, Truncation.NONE, overlap=0)[0].tokens - 2  # its tokens alone
    plain = tokenizer.split([text], 256, Truncation.CHUNK, overlap=32)[0]
    [split] = tokenizer.split([text], 256, Truncation.CHUNK, overlap=32, prefix="query: ")
    assert split.tokens == plain.tokens + lead
    prefix_ids = content(tokenizer.split(["query: "], 64, Truncation.NONE, overlap=0)[0].windows[0])
    for window in split.windows:
        assert window.length <= 256 and content(window)[:lead] == prefix_ids
        assert text[window.start : window.end].strip()  # offsets are the text's, not the prefix's
    assert split.windows[0].start == 0 and split.windows[-1].end == len(text)
    [short] = tokenizer.split(["hello world"], 256, Truncation.CHUNK, overlap=32, prefix="query: ")
    joined = tokenizer.split(["query: hello world"], 256, Truncation.CHUNK, overlap=32)[0]
    assert short.windows[0].ids.tolist() == joined.windows[0].ids.tolist()
    assert (short.windows[0].start, short.windows[0].end) == (0, len("hello world"))


TEMPLATE = ("judge query: ", " document: ", " answer:")


def test_a_pair_template_frames_every_window_and_counts_in_the_tokens(tokenizer):
    query = tokenizer.query("where is berlin", 16)
    document = text_of(600, random.Random(6))
    frame = tokenizer.frame(TEMPLATE)
    [split] = tokenizer.split_pairs(query, [document], 128, Truncation.CHUNK, 16, template=TEMPLATE)
    head, middle, tail = frame.head.ids, frame.middle.ids, frame.tail.ids
    assert split.tokens == query.tokens + 600 + frame.tokens + 2  # [CLS] ... [SEP] as a single sequence
    assert split.chunked
    for window in split.windows:
        ids = content(window)
        assert window.length <= 128
        assert ids[: len(head)] == head and ids[-len(tail) :] == tail
        body = ids[len(head) + query.kept :]
        assert ids[len(head) : len(head) + query.kept] == query.encoding.ids
        assert body[: len(middle)] == middle
        assert set(window.type_ids.tolist()) == {0}
        assert document[window.start : window.end].strip()
    assert split.windows[0].start == 0 and split.windows[-1].end == len(document)
    assert tokenizer.pair_overhead(TEMPLATE) == frame.tokens + 2 and tokenizer.pair_overhead() == 3
    # A short document: the same ids as the template filled in and tokenized whole.
    [short] = tokenizer.split_pairs(query, ["near the spree"], 128, Truncation.CHUNK, 16, template=TEMPLATE)
    whole = tokenizer.split(["judge query: where is berlin document: near the spree answer:"], 128, Truncation.NONE, 0)
    assert short.windows[0].ids.tolist() == whole[0].windows[0].ids.tolist()


@settings(max_examples=60, deadline=None)
@given(
    query=st.text(max_size=80),
    document=st.text(max_size=600),
    template=st.tuples(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20)),
    truncation=st.sampled_from([Truncation.CHUNK, Truncation.END, Truncation.START, Truncation.NONE]),
)
def test_any_text_in_any_pair_template_fits_the_window_framed(tokenizer, query, document, template, truncation):
    """Whatever the text (any Unicode, empty) and template: every window fits, holds the template's tokens
    around the capped query and a slice of the document, and its offsets lie within the document."""
    capped = tokenizer.query(query, 16)
    frame = tokenizer.frame(template)
    [split] = tokenizer.split_pairs(capped, [document], 96, truncation, 8, template=template)
    assert split.tokens == capped.tokens + len(tokenizer.raw.encode(document, add_special_tokens=False).ids) + (
        frame.tokens + tokenizer.single_specials
    )
    if split.too_long:
        assert truncation is Truncation.NONE and split.tokens > 96
    for window in split.windows:
        ids = content(window)
        assert window.length <= 96
        assert ids[: len(frame.head.ids)] == frame.head.ids
        assert ids[len(ids) - len(frame.tail.ids) :] == frame.tail.ids
        assert 0 <= window.start <= window.end <= len(document)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=80), min_size=1, max_size=6))
def test_a_text_that_fits_is_the_window_its_content_makes_with_the_special_tokens(tokenizer, texts):
    """The one-pass path (encoded with special tokens) gives what cutting the bare content would: the same
    ids, type ids (absent when all 0), token count and offsets into the text."""
    raw = tokenizer.raw
    for text, split in zip(texts, tokenizer.split(texts, 256, Truncation.CHUNK, overlap=0), strict=True):
        bare = raw.encode(text, add_special_tokens=False)
        processed = raw.post_process(bare)
        [window] = split.windows
        assert window.ids.tolist() == processed.ids and split.tokens == len(processed.ids)
        assert window.type_ids is None or window.type_ids.tolist() == processed.type_ids
        assert not any(processed.type_ids) or window.type_ids is not None
        offsets = bare.offsets
        assert (window.start, window.end) == ((offsets[0][0], offsets[-1][1]) if offsets else (0, 0))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=80), min_size=1, max_size=6))
def test_without_offsets_the_windows_hold_the_same_tokens(tokenizer, texts):
    with_offsets = tokenizer.split(texts, 256, Truncation.CHUNK, overlap=0)
    without = tokenizer.split(texts, 256, Truncation.CHUNK, overlap=0, offsets=False)
    for a, b in zip(with_offsets, without, strict=True):
        assert a.tokens == b.tokens and len(a.windows) == len(b.windows)
        assert [w.ids.tolist() for w in a.windows] == [w.ids.tolist() for w in b.windows]
