"""The two rerankers side by side: the MiniLM cross-encoder contract and the SmolLM2 yes/no judge (an LLM
served as a reranker), in one run, on the same work.

Speed: 1 query x 60 documents of 50-600 tokens (fixed seed), CHUNK, through the router and by the careful
direct client (the router's own windows and prompts, token-budget batches, 2 in flight) for each model:
the router's ratio against its own model's direct path, and tokens scored per second (the LLM's rows
hold its prompt template too, counted as tokens).

Quality: 12 hand-written queries, each with one document that answers it and three that do not, one
Rerank call per query. Pairwise accuracy: the share of (answering, other) pairs ordered right; top-1: the
share of queries whose answering document ranks first. A small, easy set, there to say honestly how far a
135M stand-in is from a reranker, not to rank rerankers.
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
from bench.rerank import QUERY, careful, through_router
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

MODELS = {"minilm-reranker": "cross-encoder contract", "smollm2-reranker": "LLM yes/no judge"}
SEED = 777

# (query, the document that answers it, three that do not)
LABELLED = [
    ("What is the capital of France?", "Paris is the capital and largest city of France.",
     ["Bananas are rich in potassium.", "The guitar has six strings.", "Mount Everest is in the Himalayas."]),
    ("How do plants make food?", "Plants use sunlight, water and carbon dioxide to make sugar by photosynthesis.",
     ["The stock market fell three percent today.", "Cats sleep for most of the day.", "Rome was not built in a day."]),
    ("How do I sort a list in Python?", "Call list.sort() to sort in place, or sorted() to get a new sorted list.",
     ["The Amazon is the largest rainforest.", "Tea is grown in India and China.", "A violin has four strings."]),
    ("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare around 1600.",
     ["The recipe needs two eggs and flour.", "Jupiter is the largest planet.", "Copper conducts electricity well."]),
    ("How many people live in Berlin?", "Berlin has a population of about 3.7 million inhabitants.",
     ["Mix the flour with two eggs and a pinch of salt.", "The Nile flows north.", "Chess is played on 64 squares."]),
    ("What causes rain?", "Rain falls when water vapour condenses into droplets too heavy to stay in the cloud.",
     ["The guitar has six strings.", "Bread is baked in an oven.", "The Eiffel Tower is made of iron."]),
    ("What is the boiling point of water?", "At sea level, water boils at 100 degrees Celsius.",
     ["Penguins live in the southern hemisphere.", "The novel has twelve chapters.", "Two teams play."]),
    ("When did World War II end?", "World War II ended in 1945 with the surrender of Germany and then Japan.",
     ["Lemons are sour.", "The piano has 88 keys.", "Honey bees live in hives."]),
    ("What do pandas eat?", "Giant pandas eat almost nothing but bamboo.",
     ["The train leaves at nine.", "Saturn has rings of ice and rock.", "Ink is made from pigments."]),
    ("How fast does light travel?", "Light travels at about 300,000 kilometres per second in a vacuum.",
     ["My sister likes to paint.", "Wool comes from sheep.", "The museum opens on Mondays."]),
    ("What is the largest ocean?", "The Pacific is the largest and deepest of Earth's oceans.",
     ["Carrots are orange.", "The meeting was moved to Friday.", "Snakes shed their skin."]),
    ("Why is the sky blue?", "Air scatters blue sunlight more than red light, so the sky looks blue.",
     ["The shop sells shoes.", "Elephants have long trunks.", "He forgot his umbrella."]),
]  # fmt: skip


async def quality(target: str, model: str) -> dict[str, float]:
    right = pairs = top1 = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        for query, answer, others in LABELLED:
            reply = await stub.Rerank(pb.RerankRequest(model=model, query=query, documents=[answer, *others]))
            scores = {r.index: r.score for r in reply.results}
            right += sum(scores[0] > scores[i] for i in range(1, len(others) + 1))
            pairs += len(others)
            top1 += reply.results[0].index == 0
    return {"pairwise_accuracy": right / pairs, "top1_accuracy": top1 / len(LABELLED)}


async def run(count: int) -> list[PathResult]:
    rng = np.random.default_rng(SEED)
    lengths = rng.integers(50, 601, size=count)
    documents = [mixed_texts(1, int(n), int(n), seed=SEED + i)[0] for i, n in enumerate(lengths)]
    results = []
    with triton_server() as triton, router_process(triton.grpc_address) as target:
        for model, kind in MODELS.items():
            # A whole pass to warm up: onnxruntime sizes its memory for the largest batches on first sight,
            # which would otherwise fall on whichever path runs first.
            say(f"{model} ({kind}): warming up with a whole pass")
            direct = await DirectClient(triton.grpc_address, model).start()
            await careful(direct, documents)
            await through_router(target, documents[:4], pb.TRUNCATION_CHUNK, "warm-up", model)
            say(f"{model}: careful direct client, then the router ...")
            base = await careful(direct, documents, f"direct: {model}, careful", QUERY)
            await direct.close()
            routed = await through_router(
                target, documents, pb.TRUNCATION_CHUNK, f"router: {model} ({kind})", model, QUERY
            )
            routed.extra["vs_own_direct"] = routed.throughput / base.throughput
            started = time.perf_counter()
            routed.extra.update(await quality(target, model))
            say(
                f"  {model}: {routed.extra['tokens_per_s']:.0f} tokens/s through the router, "
                f"{routed.extra['vs_own_direct']:.2f} of direct; pairwise accuracy "
                f"{routed.extra['pairwise_accuracy']:.2f}, top-1 {routed.extra['top1_accuracy']:.2f} "
                f"({time.perf_counter() - started:.1f} s)"
            )
            results += [base, routed]
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60, help="documents for the speed rows (default 60)")
    args = parser.parse_args(argv)
    say(f"rerankers: 1 query x {args.count} documents of 50-600 tokens, seed {SEED}; {len(LABELLED)} labelled queries")
    results = asyncio.run(run(args.count))
    write_report(
        "rerankers",
        "Rerankers side by side: MiniLM cross-encoder contract vs SmolLM2-135M as a yes/no judge (CPU)",
        [
            f"Speed: 1 query x {args.count} documents of 50-600 tokens (fixed seed {SEED}), CHUNK, one request; "
            "`vs_own_direct` is the router's documents/s over the careful direct client's for the same model.",
            "`tokens_per_s` counts the tokens of every row computed (the LLM's prompt template included).",
            f"Quality: {len(LABELLED)} queries x (1 answering + 3 unrelated documents), bench/rerankers.py; "
            "`pairwise_accuracy` and `top1_accuracy` on the router rows. An easy set: it shows how far a 135M "
            "stand-in is from a reranker, it does not rank rerankers.",
        ],
        results,
        baseline=results[0].name,
    )
    bar_plot("rerankers", "Rerankers: tokens scored per second", results, "tokens/s", value="tokens_per_s")


if __name__ == "__main__":
    main()
