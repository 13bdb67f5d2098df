"""Rerank: 1 query x 1,000 documents of 50-2,000 tokens (fixed seed), through the router and straight to
Triton by a naive client (fixed batches of 32 in request order, each document cut at 512 tokens).

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
import tritonclient.grpc.aio as triton_grpc

from bench.corpus import mixed_texts
from bench.harness import PathResult, bar_plot, router_process, say, triton_server, write_report
from router.core.contract import Truncation
from router.core.packing import pad_rows
from router.core.tokenize import ModelTokenizer
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.settings import PROJECT_ROOT

MODEL = "minilm-reranker"
QUERY = "How many people live in Berlin?"
SEED = 4321
TOKENIZER = PROJECT_ROOT / "triton_models" / "repository" / MODEL / "tokenizer.json"


async def naive(address: str, documents: list[str]) -> PathResult:
    """What a client does without the router: batches of 32 in order, each pair cut at 512 tokens."""
    client = triton_grpc.InferenceServerClient(address)
    tokenizer = ModelTokenizer.from_file(TOKENIZER)
    real = padded = 0
    say("  naive client: batches of 32 in order, cut at 512 ...")
    started = time.perf_counter()
    query = tokenizer.query(QUERY, 128)
    windows = [s.windows[0] for s in tokenizer.split_pairs(query, documents, 512, Truncation.END, 0)]
    latencies = []
    for start in range(0, len(windows), 32):
        batch = windows[start : start + 32]
        ids, mask = pad_rows([w.ids for w in batch])
        type_ids, _ = pad_rows([w.type_ids for w in batch])
        inputs = []
        for name, array in (("input_ids", ids), ("attention_mask", mask), ("token_type_ids", type_ids)):
            tensor = triton_grpc.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        sent = time.perf_counter()
        await client.infer(MODEL, inputs)
        latencies.append(time.perf_counter() - sent)
        real += int(mask.sum())
        padded += mask.size
    wall = time.perf_counter() - started
    await client.close()
    return PathResult(
        "direct: naive batches of 32 in order, cut at 512",
        len(documents),
        wall,
        latencies,
        {"tokens_scored": real, "tokens_per_s": real / wall, "padding_efficiency": real / padded},
    )


async def through_router(target: str, documents: list[str], truncation: int, name: str) -> PathResult:
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 1 << 26)]) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        say(f"  {name} ...")
        started = time.perf_counter()
        reply = await stub.Rerank(
            pb.RerankRequest(model=MODEL, query=QUERY, documents=documents, truncation=truncation), timeout=3600
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
        results = [
            await naive(triton.grpc_address, documents),
            await through_router(target, documents, pb.TRUNCATION_END, "router: END at 512 (same tokens as naive)"),
            await through_router(target, documents, pb.TRUNCATION_CHUNK, "router: CHUNK (every token scored)"),
        ]
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
            "Ratios are documents/s against the naive client; CHUNK scores every token, so it does more work.",
        ],
        results,
        baseline=results[0].name,
    )
    bar_plot("rerank", "Rerank: real tokens scored per second", results, "tokens/s", value="tokens_per_s")


if __name__ == "__main__":
    main()
