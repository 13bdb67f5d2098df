"""Embedding encodings: each form round-trips within its documented error, the binary forms pack signs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from router.core.text.quantize import Encoding, decode, encode

VECTORS = arrays(
    np.float32, st.tuples(st.integers(1, 4), st.sampled_from([8, 16, 384])), elements=st.floats(-2, 2, width=32)
)


@settings(max_examples=60, deadline=None)
@given(VECTORS, st.sampled_from([0.25, 1.0]))
def test_each_encoding_round_trips_within_its_step(vectors, r):
    assert np.array_equal(decode(encode(vectors, Encoding.FLOAT32_BYTES), Encoding.FLOAT32_BYTES), vectors)
    clipped = np.clip(vectors, -r, r)
    for encoding, step in ((Encoding.INT8, r / 127), (Encoding.UINT8, r / 127.5)):
        rows = encode(vectors, encoding, r)
        assert rows.dtype == (np.int8 if encoding is Encoding.INT8 else np.uint8)
        assert np.abs(decode(rows, encoding, r) - clipped).max() <= step / 2 + 1e-6
    signs = np.where(vectors > 0, 1.0, -1.0)
    for encoding in (Encoding.BINARY, Encoding.UBINARY):
        rows = encode(vectors, encoding)
        assert rows.shape == (vectors.shape[0], vectors.shape[1] // 8)
        assert np.array_equal(decode(rows, encoding), signs)


def test_binary_is_ubinary_minus_128_first_component_in_the_high_bit():
    vector = np.array([[1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 1]], dtype=np.float32)
    assert encode(vector, Encoding.UBINARY).tolist() == [[0b10000000, 0b00000001]]
    assert encode(vector, Encoding.BINARY).tolist() == [[0, 1 - 128]]


def test_binary_needs_a_multiple_of_8_components():
    with pytest.raises(ValueError, match="multiple of 8"):
        encode(np.ones((1, 12), dtype=np.float32), Encoding.BINARY)
