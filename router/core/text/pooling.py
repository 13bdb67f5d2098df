"""Combine per-window model outputs into one result per input."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def combine_windows(vectors: np.ndarray, weights: Sequence[int], pooling: str = "mean") -> np.ndarray:
    """One embedding for an input cut into windows (one row per window), by the model's pooling.

    - `mean`: the model mean-pools each window over its tokens, so weighting windows by their token
      counts gives (overlaps aside) the mean over all the text's tokens.
    - `max`: the element-wise max over windows is the max over all the text's tokens.
    - `cls`, `last`: a window's vector summarises that window alone; no pooling over windows recovers
      the whole text's, so windows count equally (plain mean).
    """
    if len(vectors) == 1:
        return vectors[0]
    if pooling == "max":
        return vectors.max(axis=0)
    if pooling in ("cls", "last"):
        return vectors.mean(axis=0)
    w = np.asarray(weights, dtype=np.float32)
    return (vectors * w[:, None]).sum(axis=0) / w.sum()


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    return matrix / np.maximum(norms, 1e-12)[:, None]
