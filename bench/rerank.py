"""Rerank: 1 query x 1,000 documents of 50-2,000 tokens (fixed seed), through the router and straight to
Triton by two clients, in one run:

- a naive client: fixed batches of 32 in request order, each document cut at 512 tokens, one in flight;
- a careful client: the same CHUNK windows as the router, length-sorted token-budget batches (the
  model's own budget and batch size), two in flight as the router keeps: the best direct path.

The router scores every token of every document (CHUNK windows); the naive client scores at most the
first 512 tokens of each. "Tokens scored" counts real (unpadded) document and query tokens computed;
padding efficiency is real tokens / padded tokens computed.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc
import numpy as np

from bench.corpus import mixed_texts
from bench.direct import DirectClient
from bench.harness import PathResult, bar_plot, router_process, say, triton_server, write_report
from router.core.config import RequestLimits
from router.core.models.contract import Truncation
from router.core.scheduling.batching import BatchLimits, pack
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

MODEL = "minilm-reranker"
QUERY = "How many people live in Berlin?"
SEED = 4321


async def naive(direct: DirectClient, documents: list[str]) -> PathResult:
    """What a client does without the router: batches of 32 in order, each pair cut at 512 tokens."""
    tokenizer, contract = direct.tokenizer, direct.contract
    real = padded = 0
    say("  naive client: batches of 32 in order, cut at 512 ...")
    started = time.perf_counter()
    query = tokenizer.query(QUERY, contract.max_query_tokens)
    windows = [s.windows[0] for s in tokenizer.split_pairs(query, documents, 512, Truncation.END, 0)]
    latencies = []
    for start in range(0, len(windows), 32):
        batch = windows[start : start + 32]
        sent = time.perf_counter()
        await direct.infer(batch)
        latencies.append(time.perf_counter() - sent)
        real += sum(w.length for w in batch)
        padded += len(batch) * max(w.length for w in batch)
    wall = time.perf_counter() - started
    return PathResult(
        "direct: naive batches of 32 in order, cut at 512",
        len(documents),
        wall,
        latencies,
        {"tokens_scored": real, "tokens_per_s": real / wall, "padding_efficiency": real / padded},
    )


async def careful(
    direct: DirectClient,
    documents: list[str],
    name: str = "direct: careful, CHUNK windows, token-budget batches, 2 in flight",
    query_text: str = QUERY,
) -> PathResult:
    """The best direct path: the router's own windows (CHUNK), packed by length within the model's
    token budget, two batches in flight; best window per document, as the router does."""
    tokenizer, contract = direct.tokenizer, direct.contract
    say("  careful client: CHUNK windows, length-sorted token-budget batches, 2 in flight ...")
    started = time.perf_counter()
    query = tokenizer.query(query_text, contract.max_query_tokens)
    overlap = RequestLimits().chunk_overlap
    splits = tokenizer.split_pairs(
        query, documents, contract.max_sequence_length, Truncation.CHUNK, overlap, template=contract.pair_template
    )
    windows = [w for s in splits for w in s.windows]
    budget = max(contract.max_batch_tokens or 0, contract.max_sequence_length)
    batches = pack([w.length for w in windows], BatchLimits(contract.max_batch_size, budget))
    scores = np.empty(len(windows), dtype=np.float64)
    latencies: list[float] = []
    queue = list(reversed(batches))

    async def worker() -> None:
        while queue:
            batch = queue.pop()
            sent = time.perf_counter()
            out = await direct.infer([windows[i] for i in batch])
            latencies.append(time.perf_counter() - sent)
            scores[batch] = out.reshape(len(batch), -1)[:, contract.score_column]

    await asyncio.gather(worker(), worker())
    best, start = [], 0
    for split in splits:
        best.append(float(scores[start : start + len(split.windows)].max()))
        start += len(split.windows)
    wall = time.perf_counter() - started
    real = sum(w.length for w in windows)
    padded = sum(len(b) * max(windows[i].length for i in b) for b in batches)
    return PathResult(
        name,
        len(documents),
        wall,
        latencies,
        {
            "tokens_scored": real,
            "tokens_per_s": real / wall,
            "padding_efficiency": real / padded,
            "windows": len(windows),
        },
    )


async def through_router(
    target: str, documents: list[str], truncation: int, name: str, model: str = MODEL, query: str = QUERY
) -> PathResult:
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 1 << 26)]) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        say(f"  {name} ...")
        started = time.perf_counter()
        reply = await stub.Rerank(
            pb.RerankRequest(model=model, query=query, documents=documents, truncation=truncation), timeout=3600
        )
        wall = time.perf_counter() - started
    usage = reply.usage
    return PathResult(
        name,
        len(documents),
        wall,
        [wall],
        {
            "tokens_scored": usage.computed_tokens,
            "tokens_per_s": usage.computed_tokens / wall,
            "padding_efficiency": usage.computed_tokens / usage.padded_tokens,
            "windows": usage.sequences,
        },
    )


async def run(count: int) -> list[PathResult]:
    rng = np.random.default_rng(SEED)
    lengths = rng.integers(50, 2001, size=count)
    documents = [mixed_texts(1, int(n), int(n), seed=SEED + i)[0] for i, n in enumerate(lengths)]
    with triton_server() as triton, router_process(triton.grpc_address) as target:
        say("warming up")
        await through_router(target, documents[:8], pb.TRUNCATION_CHUNK, "warm-up")
        direct = await DirectClient(triton.grpc_address, MODEL).start()
        await careful(direct, documents[:8])
        results = [
            await naive(direct, documents),
            await careful(direct, documents),
            await through_router(target, documents, pb.TRUNCATION_END, "router: END at 512 (same tokens as naive)"),
            await through_router(target, documents, pb.TRUNCATION_CHUNK, "router: CHUNK (every token scored)"),
        ]
        await direct.close()
    for r in results:
        say(
            f"  {r.name}: {r.wall_s:.1f} s, {r.extra['tokens_per_s']:.0f} tokens/s, "
            f"padding efficiency {r.extra['padding_efficiency']:.2f}"
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="documents (default 1,000)")
    args = parser.parse_args(argv)
    say(f"rerank: 1 query x {args.count} documents of 50-2,000 tokens, seed {SEED}")
    results = asyncio.run(run(args.count))
    write_report(
        "rerank",
        "Rerank: router vs a naive client straight to Triton (minilm-reranker, CPU)",
        [
            f"1 query x {args.count} documents of 50-2,000 tokens (fixed seed {SEED}), in one request.",
            "The naive client sends batches of 32 in request order, each pair cut at 512 tokens.",
            "`tokens_per_s` counts real tokens scored; `padding_efficiency` is real / padded tokens computed.",
            "The careful client scores the same CHUNK windows as the router: `router: CHUNK` against it is "
            "the like-for-like ratio (aim: at least 0.95). Ratios are documents/s against the careful client.",
        ],
        results,
        baseline=results[1].name,
    )
    bar_plot("rerank", "Rerank: real tokens scored per second", results, "tokens/s", value="tokens_per_s")


if __name__ == "__main__":
    main()
