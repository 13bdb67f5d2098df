"""The router's own cost with the model made free: CPU per text and per call, beside a careful direct
client, the floor of one Python gRPC call and the tokenizer alone, in alternating rounds of one sitting.

On a CPU testbed the model costs about 20 ms of CPU per text and hides the router; on a GPU a short text
costs the model tens of microseconds and the router sets the ceiling. Here the embedder and the reranker
are replaced by a Python-backend model that answers at once with constants of the right shapes
(triton_models/free_model.py); their configs, contracts and tokenizers are the served ones. What each
path spends is read from /proc per process (user + system CPU), which is steady on a shared machine;
throughput is a ratio within the same rounds.

Paths, each round in this order:
- router, Embed calls of 32 texts, 8 callers; a careful direct client doing the same work (the same
  tokenizer, truncation and tensors, tritonclient's aio client, normalising), 32 texts a call, 8 in flight;
- the tokenizer alone on the same texts (`encode_batch`, 32 at a time);
- router, one-text Embed calls from 16 callers; a bare grpc.aio server answering Embed with a constant
  384-float vector (bench/passthrough.py --constant), the floor of one Python gRPC call, 16 callers;
- router, Rerank calls of 20 documents, 8 callers; a careful direct client doing the same (query and
  document pairs cut at the model's length, best score first), 8 in flight.

A last round runs the 32-text Embed path under py-spy (its figures are not counted): where a text's
microseconds go in the router, by stage, from the sampled stacks, scaled to the measured CPU per text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_grpc
from tokenizers import Tokenizer

from bench.corpus import mixed_texts
from bench.harness import (
    PROJECT_ROOT,
    REPOSITORY,
    RESULTS,
    SCRATCH,
    cpu_seconds,
    machine,
    router_serve,
    say,
    triton_server,
)
from bench.overhead import passthrough
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

EMBEDDER = "all-minilm-l6-v2"
RERANKER = "minilm-reranker"
FREE_MODEL = PROJECT_ROOT / "triton_models" / "free_model.py"
SEED = 3030
QUERY = "How many people live in Berlin?"
MIN_TOKENS, MAX_TOKENS = 6, 40
"""Texts of 6-40 words, each word one token (8-42 with [CLS] and [SEP]): sentences, queries, titles, where
a GPU model's cost per text is smallest and the router's share largest."""
TEXTS_PER_CALL = 32
DOCUMENTS_PER_CALL = 20
ROUNDS = 5
TARGETS = {
    "embed_cpu_per_text_vs_direct": 1.25,
    "one_text_cpu_per_call_us": 600.0,
    "rerank_cpu_per_window_vs_direct": 1.25,
    "embed_throughput_vs_direct": 0.75,
}
"""At most (at least, for throughput) these: issue 30's targets, checked against this run's own direct client."""


def free_repository(root: Path = SCRATCH / "free-repository") -> Path:
    """A repository holding the embedder and the reranker with free_model.py as their model: their configs
    (contracts, batch sizes, queue policies) and tokenizers are the built repository's own."""
    if root.exists():
        shutil.rmtree(root)
    for model in (EMBEDDER, RERANKER):
        folder = root / model
        (folder / "1").mkdir(parents=True)
        (folder / "1" / "model.py").symlink_to(FREE_MODEL)
        (folder / "tokenizer.json").symlink_to(REPOSITORY / model / "tokenizer.json")
        shutil.copy(REPOSITORY / model / "config.pbtxt", folder / "config.pbtxt")
    return root


def _config_parameter(model: str, key: str) -> int:
    text = (REPOSITORY / model / "config.pbtxt").read_text()
    marker = f'key: "{key}", value: {{ string_value: "'
    return int(text.split(marker, 1)[1].split('"', 1)[0])


class CarefulClient:
    """What a careful service does without the router: the model's tokenizer with truncation at the model's
    length and padding to the longest in the batch, numpy tensors, tritonclient's aio client, and the
    model's post-processing (normalising embeddings; best score first for a rerank)."""

    def __init__(self, address: str, model: str, inputs: tuple[str, ...], output: str) -> None:
        self.model, self.inputs, self.output = model, inputs, output
        self.tokenizer = Tokenizer.from_file(str(REPOSITORY / model / "tokenizer.json"))
        self.tokenizer.enable_truncation(_config_parameter(model, "modelrouter.max_sequence_length"))
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id("[PAD]"))
        self.client = triton_grpc.InferenceServerClient(address)

    async def _infer(self, encodings) -> np.ndarray:
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        tensors = []
        for name in self.inputs:
            array = np.array(columns[name], dtype=np.int64)
            tensor = triton_grpc.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = await self.client.infer(
            self.model, tensors, outputs=[triton_grpc.InferRequestedOutput(self.output)]
        )
        return result.as_numpy(self.output)

    async def embed(self, texts: list[str]) -> np.ndarray:
        vectors = await self._infer(self.tokenizer.encode_batch(texts))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    async def rerank(self, query: str, documents: list[str]) -> list[tuple[int, float]]:
        scores = (await self._infer(self.tokenizer.encode_batch([(query, d) for d in documents])))[:, 0]
        order = np.argsort(-scores, kind="stable")
        return [(int(i), float(scores[i])) for i in order]

    async def close(self) -> None:
        await self.client.close()


@dataclass
class Sample:
    """One path's round: its work, its wall time, and the CPU each process spent on it."""

    calls: int
    texts: int
    wall_s: float
    cpu_s: dict[str, float]
    latencies_s: list[float] = field(default_factory=list)


@dataclass
class Path_:
    name: str
    server: str | None
    """The process whose CPU is the path's cost (`router`, `bare`), or None: the client's (this process)."""
    calls: int
    texts_per_call: int
    concurrency: int
    send: Callable[[int], Awaitable[object]]
    samples: list[Sample] = field(default_factory=list)

    def median(self, value: Callable[[Sample], float]) -> float:
        return statistics.median(value(s) for s in self.samples)

    def cost_s(self, sample: Sample) -> float:
        return sample.cpu_s[self.server or "client"]

    def summary(self) -> dict:
        texts = self.calls * self.texts_per_call
        latencies = [x for s in self.samples for x in s.latencies_s]
        return {
            "name": self.name,
            "rounds": len(self.samples),
            "calls_per_round": self.calls,
            "texts_per_call": self.texts_per_call,
            "concurrency": self.concurrency,
            "texts_per_s": round(self.median(lambda s: s.texts / s.wall_s), 1),
            "calls_per_s": round(self.median(lambda s: s.calls / s.wall_s), 1),
            "cpu_us_per_text": round(self.median(lambda s: self.cost_s(s) / s.texts * 1e6), 1),
            "cpu_us_per_call": round(self.median(lambda s: self.cost_s(s) / s.calls * 1e6), 1),
            "triton_cpu_us_per_text": round(self.median(lambda s: s.cpu_s.get("triton", 0.0) / s.texts * 1e6), 1),
            "client_cpu_us_per_text": round(self.median(lambda s: s.cpu_s["client"] / s.texts * 1e6), 1),
            "cpu_us_per_text_by_round": [round(self.cost_s(s) / s.texts * 1e6, 1) for s in self.samples],
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 2) if latencies else None,
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 2) if latencies else None,
            "max_ms": round(max(latencies) * 1000, 2) if latencies else None,
            "texts": texts,
        }


def _self_cpu() -> float:
    return cpu_seconds(os.getpid())


async def _round(path: Path_, pids: dict[str, int]) -> Sample:
    """Run `path.calls` calls, `path.concurrency` at a time, reading each process's CPU around them."""
    before = {name: cpu_seconds(pid, descendants=True) for name, pid in pids.items()}
    before["client"] = _self_cpu()
    latencies: list[float] = []
    counter = iter(range(path.calls))

    async def caller() -> None:
        for index in counter:
            sent = time.perf_counter()
            await path.send(index)
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(path.concurrency)))
    wall = time.perf_counter() - started
    after = {name: cpu_seconds(pid, descendants=True) for name, pid in pids.items()}
    after["client"] = _self_cpu()
    return Sample(
        path.calls, path.calls * path.texts_per_call, wall, {k: after[k] - before[k] for k in after}, latencies
    )


def _tokenizer_round(tokenizer: Tokenizer, batches: list[list[str]]) -> Sample:
    started, used = time.perf_counter(), _self_cpu()
    for batch in batches:
        tokenizer.encode_batch(batch)
    texts = sum(len(b) for b in batches)
    return Sample(len(batches), texts, time.perf_counter() - started, {"client": _self_cpu() - used})


async def run(rounds: int, scale: float, profile: bool) -> tuple[list[Path_], Path_, dict | None]:
    texts = mixed_texts(4096, MIN_TOKENS, MAX_TOKENS, SEED)
    documents = mixed_texts(2048, 40, 400, SEED + 1)
    repository = free_repository()
    with triton_server(repository, log_name="triton-free.log") as triton:
        with (
            router_serve(["--triton", triton.grpc_address], {"MODELROUTER_LOG_LEVEL": "info"}) as (target, router),
            passthrough(triton.grpc_address, constant=384) as (bare_target, bare),
        ):
            pids = {"router": router.pid, "bare": bare.pid, "triton": triton.pid}
            options = [("grpc.max_receive_message_length", 1 << 26)]
            channel = grpc.aio.insecure_channel(target, options=options)
            stub = pb_grpc.ModelRouterServiceStub(channel)
            bare_channel = grpc.aio.insecure_channel(bare_target, options=options)
            bare_stub = pb_grpc.ModelRouterServiceStub(bare_channel)
            embedder = CarefulClient(triton.grpc_address, EMBEDDER, ("input_ids", "attention_mask"), "embedding")
            reranker = CarefulClient(
                triton.grpc_address, RERANKER, ("input_ids", "attention_mask", "token_type_ids"), "logits"
            )

            def chunk(items: list[str], size: int, index: int) -> list[str]:
                start = (index * size) % (len(items) - size)
                return items[start : start + size]

            embed_requests = [
                pb.EmbedRequest(model=EMBEDDER, inputs=chunk(texts, TEXTS_PER_CALL, i)) for i in range(128)
            ]
            one_text = [pb.EmbedRequest(model=EMBEDDER, inputs=[t]) for t in texts]
            rerank_requests = [
                pb.RerankRequest(model=RERANKER, query=QUERY, documents=chunk(documents, DOCUMENTS_PER_CALL, i))
                for i in range(128)
            ]

            def calls(n: int) -> int:
                return max(16, int(n * scale))

            paths = [
                Path_(
                    "router: Embed, 32 texts a call, 8 callers",
                    "router",
                    calls(400),
                    TEXTS_PER_CALL,
                    8,
                    lambda i: stub.Embed(embed_requests[i % 128], timeout=60),
                ),
                Path_(
                    "direct: careful client, 32 texts a call, 8 in flight",
                    None,
                    calls(400),
                    TEXTS_PER_CALL,
                    8,
                    lambda i: embedder.embed(list(embed_requests[i % 128].inputs)),
                ),
                Path_(
                    "router: Embed, one text a call, 16 callers",
                    "router",
                    calls(3000),
                    1,
                    16,
                    lambda i: stub.Embed(one_text[i % len(one_text)], timeout=60),
                ),
                Path_(
                    "floor: bare grpc.aio server, constant vector, 16 callers",
                    "bare",
                    calls(3000),
                    1,
                    16,
                    lambda i: bare_stub.Embed(one_text[i % len(one_text)], timeout=60),
                ),
                Path_(
                    "router: Rerank, 20 documents a call, 8 callers",
                    "router",
                    calls(300),
                    DOCUMENTS_PER_CALL,
                    8,
                    lambda i: stub.Rerank(rerank_requests[i % 128], timeout=60),
                ),
                Path_(
                    "direct: careful client, 20 documents a call, 8 in flight",
                    None,
                    calls(300),
                    DOCUMENTS_PER_CALL,
                    8,
                    lambda i: reranker.rerank(QUERY, list(rerank_requests[i % 128].documents)),
                ),
            ]
            tokenizer = Path_("tokenizer alone: encode_batch, 32 texts at a time", None, calls(400), 32, 1, None)
            batches = [list(embed_requests[i % 128].inputs) for i in range(tokenizer.calls)]

            say("warming up every path")
            for path in paths:
                for i in range(32):
                    await path.send(i)
            for number in range(1, rounds + 1):
                say(f"round {number} of {rounds}")
                for path in paths:
                    sample = await _round(path, pids)
                    path.samples.append(sample)
                    say(
                        f"  {path.name}: {sample.texts / sample.wall_s:,.0f} texts/s, "
                        f"{path.cost_s(sample) / sample.texts * 1e6:,.1f} us CPU per text "
                        f"({path.server or 'client'}), p99 {np.percentile(sample.latencies_s, 99) * 1000:.1f} ms"
                    )
                tokenizer.samples.append(_tokenizer_round(embedder.tokenizer, batches))
            profiled = await _profile(paths[0], pids) if profile else None
            await channel.close()
            await bare_channel.close()
            await embedder.close()
            await reranker.close()
    return paths, tokenizer, profiled


STAGES = {
    "validate and tokenize": (
        "router/core/tokenize.py",
        "router/core/pipeline.py",
        "router/core/validation.py",
        "router/core/registry.py",
    ),
    "queue and batch": (
        "router/core/scheduler.py",
        "router/core/fair_queue.py",
        "router/core/batching.py",
        "router/core/admission.py",
        "router/core/work.py",
        "router/core/drain.py",
        "router/core/accounting.py",
    ),
    "tensors": ("adapters/triton/tensors.py",),
    "Triton call": ("adapters/triton/",),
    "pooling": ("router/core/embed.py", "router/core/rerank.py", "router/core/pooling.py", "router/core/quantize.py"),
    "request and response encoding": ("router/grpc/converters.py", "router/grpc/servicers.py"),
    "gRPC server": ("router/grpc/",),
    "other router code": ("router/", "adapters/"),
}
"""Stages of a text's path, by the router's own innermost frame in a sampled stack."""
TELEMETRY = ("opentelemetry", "prometheus_client", "structlog", "router/metrics.py", "router/logs.py",
             "router/core/tracing.py", "router/telemetry.py", "router/span_export.py")
"""Frames that make a sample telemetry wherever they are in its stack (logs, metrics, spans)."""
OTHER = "gRPC core and event loop"
"""Samples with no frame of the router's below the event loop: the loop and gRPC's own work between
handlers, its threads included."""
ROOTS = ("router/event_loop.py", "router/cli.py", "router/__main__.py")
"""The frames every sample of the event loop's thread starts with: not a stage."""
IDLE = ("_worker (concurrent/futures/thread.py:81)",)
"""A worker thread waiting for work (py-spy counts some of those waits as active): not counted."""


def stage_of(frames: list[str]) -> str | None:
    if frames and frames[-1].startswith(IDLE):
        return None
    if any(marker in frame for frame in frames for marker in TELEMETRY):
        return "telemetry"
    for frame in reversed(frames):
        if any(root in frame for root in ROOTS):
            break
        for stage, markers in STAGES.items():
            if any(marker in frame for marker in markers):
                return stage
    return OTHER


async def _profile(path: Path_, pids: dict[str, int]) -> dict | None:
    """One more round of `path` with py-spy sampling the router: CPU per text by stage."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        say("py-spy is not installed: no profile")
        return None
    out = SCRATCH / "free-profile.txt"
    command = [py_spy, "record", "--pid", str(pids["router"]), "--format", "raw", "--rate", "250"]
    command += ["--output", str(out), "--nonblocking"]
    say("profiling the router under the 32-text Embed path (py-spy) ...")
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    await asyncio.sleep(1.0)
    sample = await _round(path, pids)
    recorder.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
    recorder.wait(timeout=60)
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        stage = stage_of(stack.split(";"))
        if stage is not None:
            counts[stage] = counts.get(stage, 0) + int(number)
    total = sum(counts.values())
    per_text = sample.cpu_s["router"] / sample.texts * 1e6
    return {
        "cpu_us_per_text": round(per_text, 1),
        "samples": total,
        "stages_us_per_text": {
            stage: round(per_text * counts.get(stage, 0) / total, 1)
            for stage in [*STAGES, "telemetry", OTHER]
        }
        if total
        else {},
    }


def report(paths: list[Path_], tokenizer: Path_, profiled: dict | None) -> dict:
    rows = {p.name: p.summary() for p in paths}
    rows[tokenizer.name] = tokenizer.summary()
    by = {key: rows[p.name] for key, p in zip(("embed", "direct", "one", "floor", "rerank", "rerank_direct"), paths)}
    figures = {
        "embed_cpu_per_text_vs_direct": by["embed"]["cpu_us_per_text"] / by["direct"]["cpu_us_per_text"],
        "one_text_cpu_per_call_us": by["one"]["cpu_us_per_call"],
        "one_text_cpu_per_call_vs_floor": by["one"]["cpu_us_per_call"] / by["floor"]["cpu_us_per_call"],
        "rerank_cpu_per_window_vs_direct": by["rerank"]["cpu_us_per_text"] / by["rerank_direct"]["cpu_us_per_text"],
        "embed_throughput_vs_direct": by["embed"]["texts_per_s"] / by["direct"]["texts_per_s"],
    }
    met = {
        key: (figures[key] >= target if key.endswith("throughput_vs_direct") else figures[key] <= target)
        for key, target in TARGETS.items()
    }
    return {
        "run": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "paths": list(rows.values()),
        "figures": {k: round(v, 3) for k, v in figures.items()},
        "targets": TARGETS,
        "met": met,
        "profile": profiled,
    }


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "free.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# The router's own cost, with the model made free (CPU per text and per call)",
        "",
        f"Run {result['run']} on {result['machine']}; `python -m bench free` (bench/free.py). Every figure is the",
        "median of the rounds; CPU is user + system time from /proc of the process named.",
        "",
        "| path | texts/s | calls/s | CPU us per text | CPU us per call | of process | Triton CPU us per text | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, server in zip(result["paths"], ("router", "client", "router", "bare server", "router", "client", "this process")):
        lines.append(
            f"| {row['name']} | {row['texts_per_s']:,} | {row['calls_per_s']:,} | {row['cpu_us_per_text']:,} | "
            f"{row['cpu_us_per_call']:,} | {server} | {row['triton_cpu_us_per_text']} | {row['p50_ms']} | {row['p99_ms']} |"
        )
    lines += ["", "| figure | this run | target | met |", "|---|---|---|---|"]
    for key, value in result["figures"].items():
        target = result["targets"].get(key)
        sign = ">=" if key.endswith("throughput_vs_direct") else "<="
        met = "" if target is None else ("yes" if result["met"][key] else "**no**")
        lines.append(f"| {key} | {value} | {'' if target is None else f'{sign} {target}'} | {met} |")
    if result["profile"]:
        profile = result["profile"]
        lines += [
            "",
            f"Where a text's {profile['cpu_us_per_text']} us of router CPU go (32-text Embed calls, py-spy, "
            f"{profile['samples']} samples; see free.png):",
            "",
            "| stage | us per text |",
            "|---|---|",
        ]
        lines += [f"| {stage} | {us} |" for stage, us in profile["stages_us_per_text"].items()]
    (RESULTS / "free.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    if result["profile"]:
        _plot(result)


def _plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = result["profile"]["stages_us_per_text"]
    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(stages)[::-1]
    values = [stages[n] for n in names]
    ax.barh(names, values, color="tab:blue")
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.1f}", va="center")
    ax.set_xlabel("router CPU microseconds per text (32-text Embed calls, model made free)")
    ax.set_title(f"Where a text's {result['profile']['cpu_us_per_text']} us go in the router")
    fig.tight_layout()
    fig.savefig(RESULTS / "free.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"alternating rounds (default {ROUNDS})")
    parser.add_argument("--scale", type=float, default=1.0, help="calls per round, as a share of the default")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy round")
    args = parser.parse_args(argv)
    say(f"free: the model made free, {args.rounds} alternating rounds")
    paths, tokenizer, profiled = asyncio.run(run(args.rounds, args.scale, not args.no_profile))
    write(report(paths, tokenizer, profiled))


if __name__ == "__main__":
    main()
