"""Combine per-window model outputs into one result per input."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def combine_windows(vectors: np.ndarray, weights: Sequence[int]) -> np.ndarray:
    """Token-weighted mean of the window embeddings of one input (one row per window).

    The model mean-pools each window over its tokens, so weighting windows by their token counts gives
    (overlaps aside) the mean over all the text's tokens.
    """
    if len(vectors) == 1:
        return vectors[0]
    w = np.asarray(weights, dtype=np.float32)
    return (vectors * w[:, None]).sum(axis=0) / w.sum()


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)
