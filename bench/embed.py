"""Embed: the router against the same texts sent straight to Triton with tritonclient, in one run.

1,000 texts of 6-256 tokens (4-254 words of the model's vocabulary, fixed seed). Direct paths tokenize
with the same tokenizer inside the timed region, as a real client would.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import numpy as np

from bench.corpus import mixed_texts
from bench.direct import DirectClient
from bench.harness import PathResult, bar_plot, measure, router_process, say, triton_server, write_report
from router.core.models.contract import Truncation
from router.core.scheduling.batching import BatchLimits, pack, padded_cost
from router.core.text.windows import Window
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

MODEL = "all-minilm-l6-v2"
SEED = 1234
DIRECT_BUDGET = 1024  # the same token budget the model's contract gives the router


class Direct(DirectClient):
    """A client that talks to Triton itself: tokenizes, pads, sends."""

    def windows(self, texts: list[str]) -> list[Window]:
        return [s.windows[0] for s in self.tokenizer.split(texts, 256, Truncation.END, 0)]

    async def texts(self, texts: list[str]) -> np.ndarray:
        return await self.infer(self.windows(texts))


def efficiency(lengths: list[int], batches: list[list[int]]) -> float:
    return sum(lengths) / sum(padded_cost([lengths[i] for i in b]) for b in batches)


async def run(count: int) -> list[PathResult]:
    texts = mixed_texts(count, 4, 254, SEED)
    with triton_server() as triton, router_process(triton.grpc_address) as target:
        direct = await Direct(triton.grpc_address, MODEL).start()
        channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.ModelRouterServiceStub(channel)

        async def router_call(batch: list[str]) -> None:
            await stub.Embed(pb.EmbedRequest(model=MODEL, inputs=batch), timeout=600)

        say("warming up both paths")
        await direct.texts(texts[:64])
        await router_call(texts[:64])

        lengths = [w.length for w in direct.windows(texts)]
        fixed = [list(range(i, min(i + 32, count))) for i in range(0, count, 32)]
        packed = pack(lengths, BatchLimits(64, DIRECT_BUDGET))
        results = [
            await measure(
                "direct: one request per text (16 concurrent)",
                count,
                [lambda t=t: direct.texts([t]) for t in texts],
                16,
                padding_efficiency=1.0,
            ),
            await measure(
                "direct: fixed batches of 32 in order (2 concurrent)",
                count,
                [lambda b=b: direct.texts([texts[i] for i in b]) for b in fixed],
                2,
                padding_efficiency=efficiency(lengths, fixed),
            ),
            await measure(
                "direct: length-sorted token-budget batches (2 concurrent)",
                count,
                [lambda b=b: direct.texts([texts[i] for i in b]) for b in packed],
                2,
                padding_efficiency=efficiency(lengths, packed),
            ),
            await measure("router: one call with every text", count, [lambda: router_call(texts)], 1),
            await measure(
                "router: one call per text (16 concurrent)",
                count,
                [lambda t=t: router_call([t]) for t in texts],
                16,
            ),
            await measure(
                "router: calls of 32 texts in order (2 concurrent)",
                count,
                [lambda b=b: router_call([texts[i] for i in b]) for b in fixed],
                2,
            ),
        ]
        await channel.close()
        await direct.close()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="texts per path (default 1,000)")
    args = parser.parse_args(argv)
    say(f"embed: {args.count} texts of 6-256 tokens, seed {SEED}")
    results = asyncio.run(run(args.count))
    best_direct = max((r for r in results if r.name.startswith("direct")), key=lambda r: r.throughput)
    write_report(
        "embed",
        "Embed: router vs direct to Triton (all-MiniLM-L6-v2, CPU)",
        [
            f"{args.count} texts of 6-256 tokens (fixed seed {SEED}); each path embeds all of them once.",
            "Direct paths tokenize in the timed region; the router runs as its own process (`router serve`).",
            f"Best direct path: {best_direct.name}. The router's aim: at least 0.95 of it.",
        ],
        results,
        baseline=best_direct.name,
    )
    bar_plot("embed", "Embed throughput (texts/s), higher is better", results, "texts/s")


if __name__ == "__main__":
    main()
