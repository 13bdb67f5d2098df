"""The batch former: which pending sequences make the next batch. Pure functions over lengths.

A batch costs `rows x longest row` tokens once padded, so sequences of similar length go together. The
former starts from an anchor (the sequence fair queuing says is next) in a list of pending lengths sorted
ascending, and grows a contiguous run around it, always taking the neighbour closest in length, while
the batch stays within the model's max batch size and token budget and its real tokens stay at least
`min_fill` of the padded batch. A sequence longer than the budget still travels, alone: the budget
shapes batches, it never refuses work.

`pack` applies the same former to a whole list at once (shortest first): what a careful client does
offline, and what the benchmarks' direct paths use, so the router and its baselines pack alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchLimits:
    max_rows: int
    """The model's max batch size."""
    max_tokens: int
    """Padded tokens per batch."""
    min_fill: float = 0.0
    """Least share of real tokens in the padded batch (0 to 1)."""


def padded_cost(lengths: Sequence[int]) -> int:
    return len(lengths) * max(lengths, default=0)


def fits(rows: int, longest: int, limits: BatchLimits) -> bool:
    """Whether `rows` rows padded to `longest` tokens are within the limits (one row always fits)."""
    return rows == 1 or (rows <= limits.max_rows and rows * longest <= limits.max_tokens)


def grow(lengths: Sequence[int], anchor: int, limits: BatchLimits) -> tuple[int, int]:
    """The batch around `lengths[anchor]`, as the half-open range [low, high) of `lengths`.

    `lengths` must be sorted ascending; only the neighbours of the growing range are read, so a lazy
    view over a large sorted container costs O(batch), not O(queue).
    """
    low, high = anchor, anchor + 1
    base = lengths[anchor]
    longest = real = base
    end = len(lengths)
    while high - low < limits.max_rows:
        below = lengths[low - 1] if low > 0 else None
        above = lengths[high] if high < end else None
        # The closer neighbour first (sorted: below <= base <= above); on a tie the shorter, which never
        # raises the padding.
        if above is None or (below is not None and base - below <= above - base):
            choices = ((below, -1), (above, +1))
        else:
            choices = ((above, +1), (below, -1))
        rows = high - low + 1
        for length, side in choices:
            if length is None:
                continue
            grown = longest if length <= longest else length
            if fits(rows, grown, limits) and real + length >= limits.min_fill * grown * rows:
                longest, real = grown, real + length
                if side < 0:
                    low -= 1
                else:
                    high += 1
                break
        else:
            break
    return low, high


def pack(lengths: Sequence[int], limits: BatchLimits) -> list[list[int]]:
    """Every index of `lengths` in batches formed by `grow`, anchored on the shortest left each time."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    while order:
        low, high = grow([lengths[i] for i in order], 0, limits)
        batches.append(order[low:high])
        del order[low:high]
    return batches
