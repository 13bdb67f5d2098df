"""Embeddings in the form a caller stores them: floats, raw float32 bytes, int8, uint8, or packed sign
bits (binary, ubinary). The scheme is the proto's (`Encoding` in model_router_service.proto): int8 and
uint8 scale by the model's quantization range r, the binary forms keep each component's sign, 8 to a
byte, first component in the most significant bit; binary is ubinary minus 128 as signed bytes."""

from __future__ import annotations

import enum

import numpy as np


class Encoding(enum.Enum):
    FLOAT = "float"
    FLOAT32_BYTES = "float32_bytes"
    INT8 = "int8"
    UINT8 = "uint8"
    BINARY = "binary"
    UBINARY = "ubinary"

    @property
    def packs_bits(self) -> bool:
        return self in (Encoding.BINARY, Encoding.UBINARY)


def encode(vectors: np.ndarray, encoding: Encoding, scale: float = 1.0) -> np.ndarray:
    """Rows of float32 vectors in `encoding`: float32 for the float forms, else one int8 or uint8 row per
    vector (dimensions / 8 bytes for the binary forms, which need a multiple of 8 dimensions)."""
    if encoding in (Encoding.FLOAT, Encoding.FLOAT32_BYTES):
        return np.ascontiguousarray(vectors, dtype="<f4")
    if encoding is Encoding.INT8:
        return np.clip(np.rint(vectors * (127.0 / scale)), -127, 127).astype(np.int8)
    if encoding is Encoding.UINT8:
        return np.clip(np.rint((vectors / scale + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if vectors.shape[-1] % 8:
        raise ValueError(f"{encoding.value} packs 8 components a byte: {vectors.shape[-1]} is not a multiple of 8")
    bits = np.packbits(vectors > 0, axis=-1)
    if encoding is Encoding.UBINARY:
        return bits
    return (bits.astype(np.int16) - 128).astype(np.int8)


def decode(rows: np.ndarray, encoding: Encoding, scale: float = 1.0) -> np.ndarray:
    """The float32 vectors `encode` approximates (the binary forms: +1 or -1 per component). For tests,
    benchmarks and callers' reference."""
    if encoding in (Encoding.FLOAT, Encoding.FLOAT32_BYTES):
        return rows.astype(np.float32)
    if encoding is Encoding.INT8:
        return rows.astype(np.float32) * (scale / 127.0)
    if encoding is Encoding.UINT8:
        return (rows.astype(np.float32) / 127.5 - 1.0) * scale
    unsigned = rows if encoding is Encoding.UBINARY else (rows.astype(np.int16) + 128).astype(np.uint8)
    return np.unpackbits(unsigned, axis=-1).astype(np.float32) * 2.0 - 1.0
