"""The batch former (router/core/scheduling/batching.py): pure functions over lengths."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from router.core.scheduling.batching import BatchLimits, grow, pack, padded_cost
from router.core.text.pooling import combine_windows, l2_normalize


@given(
    lengths=st.lists(st.integers(1, 600), max_size=300),
    max_rows=st.integers(1, 64),
    max_tokens=st.integers(1, 9000),
)
def test_pack_places_every_index_once_within_limits(lengths, max_rows, max_tokens):
    batches = pack(lengths, BatchLimits(max_rows, max_tokens))
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= max_rows
        assert padded_cost([lengths[i] for i in batch]) <= max_tokens or len(batch) == 1
    # Anchored on the shortest left each time, so batches do not interleave lengths.
    assert [lengths[i] for i in flat] == sorted(lengths)


@given(
    lengths=st.lists(st.integers(1, 300), min_size=1, max_size=200),
    anchor=st.integers(0, 199),
    max_rows=st.integers(1, 32),
    max_tokens=st.integers(1, 4000),
    min_fill=st.floats(0.0, 1.0),
)
def test_grow_keeps_the_anchor_and_every_limit(lengths, anchor, max_rows, max_tokens, min_fill):
    lengths = sorted(lengths)
    anchor = anchor % len(lengths)
    low, high = grow(lengths, anchor, BatchLimits(max_rows, max_tokens, min_fill))
    assert low <= anchor < high
    batch = lengths[low:high]
    if len(batch) > 1:
        assert len(batch) <= max_rows and padded_cost(batch) <= max_tokens
        assert sum(batch) >= min_fill * padded_cost(batch) - 1e-9


def test_grow_takes_the_closest_lengths_first():
    lengths = [2, 9, 10, 11, 30]
    assert grow(lengths, 2, BatchLimits(max_rows=3, max_tokens=1000)) == (1, 4)
    # A fill floor keeps a short sequence out of a batch of long ones.
    assert grow([2, 30, 30], 1, BatchLimits(max_rows=3, max_tokens=1000, min_fill=0.8)) == (1, 3)


def test_sorting_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(6, 300, size=1000).tolist()
    real = sum(lengths)
    packed = sum(padded_cost([lengths[i] for i in b]) for b in pack(lengths, BatchLimits(64, 8192)))
    naive = sum(padded_cost(lengths[i : i + 32]) for i in range(0, len(lengths), 32))
    assert real / packed > 0.9 > 0.6 > real / naive


def test_combine_windows_follows_the_models_pooling():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    assert np.allclose(combine_windows(vectors, [3, 1], "mean"), [0.75, 0.25])  # weighted by tokens
    assert np.allclose(combine_windows(vectors, [3, 1], "cls"), [0.5, 0.5])  # windows count equally
    assert np.allclose(combine_windows(vectors, [3, 1], "max"), [1.0, 1.0])
    assert np.allclose(np.linalg.norm(l2_normalize(vectors), axis=1), 1.0)
