"""Packing by token budget."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from router.core.packing import pack_by_length, pad_rows, padded_cost
from router.core.pooling import combine_windows, l2_normalize


@given(
    lengths=st.lists(st.integers(1, 600), max_size=300),
    max_batch_size=st.integers(1, 64),
    max_batch_tokens=st.integers(1, 9000),
)
def test_every_index_once_and_each_batch_within_limits(lengths, max_batch_size, max_batch_tokens):
    batches = pack_by_length(lengths, max_batch_size, max_batch_tokens)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= max_batch_size
        sizes = [lengths[i] for i in batch]
        assert padded_cost(sizes) <= max_batch_tokens or len(batch) == 1
    # Sorted by length, so batches do not interleave lengths.
    assert [lengths[i] for i in flat] == sorted(lengths)


def test_sorting_cuts_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(6, 300, size=1000).tolist()
    real = sum(lengths)
    packed = sum(padded_cost([lengths[i] for i in b]) for b in pack_by_length(lengths, 64, 8192))
    naive = sum(padded_cost(lengths[i : i + 32]) for i in range(0, len(lengths), 32))
    assert real / packed > 0.9 > 0.6 > real / naive


def test_pad_rows_masks_padding():
    ids, mask = pad_rows([np.array([1, 2, 3]), np.array([4])])
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_combine_windows_weights_by_tokens():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    combined = combine_windows(vectors, [3, 1])
    assert np.allclose(combined, [0.75, 0.25])
    assert np.allclose(np.linalg.norm(l2_normalize(combined[None]), axis=1), 1.0)
