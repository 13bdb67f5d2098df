"""`make bench`: every benchmark, one after the other; results land in bench/results/."""

from __future__ import annotations

import sys

from bench import (
    admission,
    batching,
    embed,
    encodings,
    fleet,
    free,
    generate,
    http,
    overhead,
    rerank,
    rerankers,
    shards,
    soak,
)

BENCHMARKS = {
    "free": free.main,
    "embed": embed.main,
    "rerank": rerank.main,
    "rerankers": rerankers.main,
    "batching": batching.main,
    "admission": admission.main,
    "overhead": overhead.main,
    "shards": shards.main,
    "fleet": fleet.main,
    "generate": generate.main,
    "encodings": encodings.main,
    "http": http.main,
}
ON_REQUEST = {"soak": soak.main}
"""Run only when named (`make soak`): ten minutes of load is not part of `make bench`."""


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or list(BENCHMARKS)
    options = [a for a in argv if a.startswith("-")]
    for name in names:
        {**BENCHMARKS, **ON_REQUEST}[name](options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
