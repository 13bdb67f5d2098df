"""The HTTP edge's cost: embeddings over HTTP (POST /v1/embeddings, as the `openai` package sends them)
against the same through gRPC (Embed), on one router, with the model made free (bench/free.py's
repository: a Python-backend model that answers at once), in alternating rounds of one sitting.

One `router serve --http-port` serves both; each round runs every path for a few seconds of closed-loop
callers, and the router's CPU is read from /proc around each (its cost per text and per call), the
callers' own too. Paths:
- gRPC Embed, 32 texts a call, 8 callers (grpc.aio, one channel);
- HTTP /v1/embeddings, 32 texts a call, 8 callers, `encoding_format` base64 (the `openai` package's
  default), and the same with floats as JSON numbers;
- gRPC Embed, one text a call, 16 callers; HTTP, one text a call, 16 callers (base64).
The HTTP callers are an httpx.AsyncClient with a connection per caller and the bodies serialised once
beforehand, so the callers' JSON work is not the router's figure.

`make bench http` writes bench/results/http.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics

import grpc
import httpx
import numpy as np

from adapters.triton.embedded import free_port
from bench.corpus import mixed_texts
from bench.free import EMBEDDER, MAX_TOKENS, MIN_TOKENS, SEED, BenchPath, Sample, alternate, free_repository
from bench.harness import RESULTS, machine, router_serve, say, triton_server
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

ROUNDS = 5
SECONDS = 5.0
TEXTS_PER_CALL = 32
GRPC_32 = "gRPC Embed, 32 texts a call, 8 callers"
HTTP_32 = "HTTP /v1/embeddings base64, 32 texts a call, 8 callers"
HTTP_32_FLOAT = "HTTP /v1/embeddings floats, 32 texts a call, 8 callers"
GRPC_1 = "gRPC Embed, one text a call, 16 callers"
HTTP_1 = "HTTP /v1/embeddings base64, one text a call, 16 callers"
PAIRS = {HTTP_32: GRPC_32, HTTP_32_FLOAT: GRPC_32, HTTP_1: GRPC_1}
"""Each HTTP path and the gRPC path it is compared with, round by round."""


async def run(rounds: int, seconds: float) -> list[BenchPath]:
    texts = mixed_texts(4096, MIN_TOKENS, MAX_TOKENS, SEED)
    defaults = {"MODELROUTER_LOG_LEVEL": "info"}  # as deployed: a log line per call, either edge
    http_port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        triton = stack.enter_context(triton_server(free_repository(), log_name="triton-http.log"))
        arguments = ["--triton", triton.grpc_address, "--http-port", str(http_port)]
        target, router = stack.enter_context(router_serve(arguments, defaults))
        channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 1 << 26)])
        stack.push_async_callback(channel.close)
        stub = pb_grpc.ModelRouterServiceStub(channel)
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", limits=limits, timeout=60)
        stack.push_async_callback(http.aclose)
        pids = {"router": router.pid, "triton": triton.pid}

        def chunk(index: int, size: int) -> list[str]:
            start = (index * size) % (len(texts) - size)
            return texts[start : start + size]

        grpc_32 = [pb.EmbedRequest(model=EMBEDDER, inputs=chunk(i, TEXTS_PER_CALL)) for i in range(128)]
        grpc_1 = [pb.EmbedRequest(model=EMBEDDER, inputs=[t]) for t in texts]

        def body(inputs: list[str], encoding: str) -> bytes:
            return json.dumps({"model": EMBEDDER, "input": inputs, "encoding_format": encoding}).encode()

        http_32 = [body(chunk(i, TEXTS_PER_CALL), "base64") for i in range(128)]
        http_32_float = [body(chunk(i, TEXTS_PER_CALL), "float") for i in range(128)]
        http_1 = [body([t], "base64") for t in texts]
        headers = {"content-type": "application/json"}

        async def post(content: bytes) -> None:
            reply = await http.post("/v1/embeddings", content=content, headers=headers)
            reply.raise_for_status()

        paths = [
            BenchPath(GRPC_32, "router", TEXTS_PER_CALL, 8, lambda i: stub.Embed(grpc_32[i % 128], timeout=60)),
            BenchPath(HTTP_32, "router", TEXTS_PER_CALL, 8, lambda i: post(http_32[i % 128])),
            BenchPath(HTTP_32_FLOAT, "router", TEXTS_PER_CALL, 8, lambda i: post(http_32_float[i % 128])),
            BenchPath(GRPC_1, "router", 1, 16, lambda i: stub.Embed(grpc_1[i % len(grpc_1)], timeout=60)),
            BenchPath(HTTP_1, "router", 1, 16, lambda i: post(http_1[i % len(http_1)])),
        ]

        def line(path: BenchPath, sample: Sample) -> str:
            cpu = sample.cpu_s["router"]
            return f"{cpu / sample.calls * 1e6:,.0f} us router CPU per call, {cpu / sample.texts * 1e6:,.1f} per text"

        await alternate(paths, pids, rounds, seconds, line)
    return paths


def _ratios(paths: list[BenchPath]) -> dict:
    """Per HTTP path, the medians over rounds of its figure over its gRPC pair's in the same round."""
    by_name = {p.name: p for p in paths}
    ratios = {}
    for name, baseline in PAIRS.items():
        pairs = list(zip(by_name[name].samples, by_name[baseline].samples, strict=True))
        ratios[name] = {
            "versus": baseline,
            "router_cpu_per_call": round(
                statistics.median(h.cpu_s["router"] / h.calls / (g.cpu_s["router"] / g.calls) for h, g in pairs), 3
            ),
            "throughput": round(statistics.median((h.texts / h.wall_s) / (g.texts / g.wall_s) for h, g in pairs), 3),
            "extra_router_cpu_us_per_call": round(
                statistics.median((h.cpu_s["router"] / h.calls - g.cpu_s["router"] / g.calls) * 1e6 for h, g in pairs),
                1,
            ),
        }
    return ratios


def report(paths: list[BenchPath]) -> dict:
    result = {
        "machine": machine(),
        "paths": [p.summary() for p in paths],
        "http_versus_grpc": _ratios(paths),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "http.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# The HTTP edge against gRPC (model made free)",
        "",
        f"Machine: {result['machine']}. One router serves both edges; rounds alternate the paths; medians.",
        "",
        "| path | texts/s | router CPU per call (us) | per text (us) | caller CPU per text (us) | p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for p in result["paths"]:
        lines.append(
            f"| {p['name']} | {p['texts_per_s']:,.0f} | {p['cpu_us_per_call']:,.0f} | {p['cpu_us_per_text']:,.1f} "
            f"| {p['client_cpu_us_per_text']:,.1f} | {p['p50_ms']} |"
        )
    lines += [
        "",
        "| HTTP path | against | router CPU per call | extra per call (us) | throughput |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["http_versus_grpc"].items():
        lines.append(
            f"| {name} | {r['versus']} | {r['router_cpu_per_call']:.2f}x | {r['extra_router_cpu_us_per_call']:,.0f} "
            f"| {r['throughput']:.2f}x |"
        )
    (RESULTS / "http.md").write_text("\n".join(lines) + "\n")
    _plot(result)
    return result


def _plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = result["paths"]
    figure, (calls, rate) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [p["name"].replace(", ", "\n", 1) for p in paths]
    colours = ["#4c72b0" if p["name"].startswith("gRPC") else "#dd8452" for p in paths]
    y = np.arange(len(paths))
    calls.barh(y, [p["cpu_us_per_call"] for p in paths], color=colours)
    calls.set_yticks(y, names, fontsize=8)
    calls.invert_yaxis()
    calls.set_xlabel("router CPU per call (us)")
    rate.barh(y, [p["texts_per_s"] for p in paths], color=colours)
    rate.set_yticks(y, [""] * len(paths))
    rate.invert_yaxis()
    rate.set_xlabel("texts per second")
    figure.suptitle("Embeddings over HTTP (orange) and gRPC (blue), one router, model made free")
    figure.tight_layout()
    figure.savefig(RESULTS / "http.png", dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"alternating rounds (default {ROUNDS})")
    parser.add_argument("--seconds", type=float, default=SECONDS, help=f"seconds per path per round ({SECONDS:g})")
    args = parser.parse_args(argv or [])
    result = report(asyncio.run(run(args.rounds, args.seconds)))
    for name, r in result["http_versus_grpc"].items():
        say(
            f"{name}: router CPU per call {r['router_cpu_per_call']:.2f}x gRPC's "
            f"(+{r['extra_router_cpu_us_per_call']:,.0f} us), throughput {r['throughput']:.2f}x"
        )
    say(f"wrote {RESULTS / 'http.md'}")
