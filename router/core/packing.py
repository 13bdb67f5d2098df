"""Pack sequences into model batches by token budget.

A batch costs `rows x longest row` tokens once padded, so sequences of similar length go together and
the padded cost stays within the budget. A sequence longer than the budget still travels, alone: the
budget shapes batches, it never refuses work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def padded_cost(lengths: Sequence[int]) -> int:
    return len(lengths) * max(lengths, default=0)


def fits(count: int, longest: int, max_batch_size: int, max_batch_tokens: int) -> bool:
    """Whether a batch of `count` rows padded to `longest` tokens is within both limits."""
    return count <= max_batch_size and (count * longest <= max_batch_tokens or count == 1)


def pack_by_length(lengths: Sequence[int], max_batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Indices of `lengths` grouped into batches: sorted by length, cut where the budget is reached."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted ascending, so the newcomer is the longest row of the grown batch.
        if current and not fits(len(current) + 1, lengths[index], max_batch_size, max_batch_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def pad_rows(rows: Sequence[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad int64 rows into one matrix; return it with its attention mask."""
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask
