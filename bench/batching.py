"""Cross-request batching: many small callers through the router vs the same callers straight to Triton
(one Triton call per caller call, Triton's dynamic batcher on), in one run; the output cache's second
pass; and how long small calls wait while a huge request is being served.

The ceiling for this machine: onnxruntime in this process on the same model file, the same texts packed
by length within the same token budget as the router's (the model's contract), no network at all. Beside
it, Triton's own ceiling: those same batches sent straight to Triton, two in flight, as a careful client
with every text in hand would. Each row says where the CPU went: `model_cpu_s` is the CPU time spent
computing the model (this process for onnxruntime in-process; Triton and its Python-backend processes
otherwise), `router_cpu_s` the router's process, so a gap between the router and the ceilings can be
told apart: Triton's own costs, padding (`fill`: real tokens over padded, from the router's metrics), or
the router.

Texts: 1,024 of 6-130 tokens (fixed seed). Callers send their calls one after another.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc

from adapters.triton.embedded import free_port
from adapters.triton.tensors import input_tensors
from bench.corpus import mixed_texts
from bench.embed import MODEL, Direct, efficiency
from bench.harness import (
    REPOSITORY,
    PathResult,
    bar_plot,
    cpu_seconds,
    router_process,
    router_serve,
    say,
    triton_server,
    write_report,
)
from router.core.scheduling.batching import BatchLimits, pack
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

SEED = 777


async def callers(name: str, calls_per_caller: list[list[list[str]]], send) -> PathResult:
    """Each caller sends its calls in turn; all callers at once. Latency per call."""
    latencies: list[float] = []

    async def caller(calls: list[list[str]]) -> None:
        for texts in calls:
            started = time.perf_counter()
            await send(texts)
            latencies.append(time.perf_counter() - started)

    say(f"  {name} ...")
    started = time.perf_counter()
    await asyncio.gather(*(caller(calls) for calls in calls_per_caller))
    wall = time.perf_counter() - started
    items = sum(len(texts) for calls in calls_per_caller for texts in calls)
    result = PathResult(name, items, wall, latencies)
    say(
        f"  {name}: {result.throughput:.1f} texts/s, p50 {result.percentile_ms(50):.0f} ms, "
        f"p99 {result.percentile_ms(99):.0f} ms"
    )
    return result


def split_among(texts: list[str], callers_count: int, per_call: int) -> list[list[list[str]]]:
    calls = [texts[i : i + per_call] for i in range(0, len(texts), per_call)]
    return [calls[c::callers_count] for c in range(callers_count)]


class CpuMeter:
    """CPU seconds used by processes (and their children) while a block runs: `used` maps `NAME_cpu_s`."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.used: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._start = {name: cpu_seconds(pid, descendants=True) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc) -> None:
        for name, pid in self.pids.items():
            self.used[f"{name}_cpu_s"] = cpu_seconds(pid, descendants=True) - self._start[name]


def scrape_fill(metrics_port: int) -> tuple[float, float, float]:
    """The router's batches, real and padded tokens for the model so far (its Prometheus metrics)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    values = dict.fromkeys(("batches", "real_tokens", "padded_tokens"), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix("modelrouter_").removesuffix("_total")
            if name in values and sample.name.endswith("_total") and sample.labels.get("model") == MODEL:
                values[name] = sample.value
    return values["batches"], values["real_tokens"], values["padded_tokens"]


def token_budget(direct: Direct) -> BatchLimits:
    """The router's batch limits for the model, from its contract: both ceilings pack with them."""
    contract = direct.contract
    return BatchLimits(contract.max_batch_size, contract.max_batch_tokens or 8192, contract.min_batch_fill or 0.0)


def in_process(direct: Direct, texts: list[str]) -> PathResult:
    """onnxruntime in this process: the model file Triton serves, the router's packing and token budget,
    the session options Triton's model.py uses (2 intra-op threads, no spinning)."""
    import onnxruntime as ort

    contract = direct.contract
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(REPOSITORY / MODEL / "1" / "model.onnx"), options)
    limits = token_budget(direct)
    say(f"  in-process onnxruntime, length-sorted batches of at most {limits.max_tokens} padded tokens ...")

    def embed_all() -> None:
        windows = direct.windows(texts)
        for batch in pack([w.length for w in windows], limits):
            session.run([contract.output_name], input_tensors(contract, [windows[i] for i in batch]))

    embed_all()  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    embed_all()
    wall = time.perf_counter() - started
    result = PathResult("in-process onnxruntime: token-budget batches", len(texts), wall, [wall])
    result.extra["model_cpu_s"] = time.process_time() - cpu
    say(f"  in-process onnxruntime: {result.throughput:.1f} texts/s")
    return result


async def triton_ceiling(direct: Direct, texts: list[str], triton_pid: int) -> PathResult:
    """The in-process row's batches, sent straight to Triton two at a time: Triton's best on these texts."""
    windows = direct.windows(texts)
    lengths = [w.length for w in windows]
    batches = pack(lengths, token_budget(direct))
    pending = iter(batches)
    name = "direct: the in-process batches, 2 in flight (Triton's ceiling)"
    say(f"  {name} ...")

    async def sender() -> None:
        for batch in pending:
            await direct.infer([windows[i] for i in batch])

    started = time.perf_counter()
    with CpuMeter(model=triton_pid) as meter:
        await asyncio.gather(sender(), sender())
    wall = time.perf_counter() - started
    result = PathResult(name, len(texts), wall, [wall])
    result.extra.update(meter.used, batches=len(batches), fill=efficiency(lengths, batches))
    say(f"  {name}: {result.throughput:.1f} texts/s")
    return result


async def run(count: int) -> list[PathResult]:
    texts = mixed_texts(count, 4, 128, SEED)
    huge = mixed_texts(1000, 4, 254, SEED + 1)
    shapes = [("64 callers x 1 text", 64, 1), ("16 callers x 1 text", 16, 1), ("8 callers x 16 texts", 8, 16)]
    results: list[PathResult] = []
    with triton_server() as triton:
        direct = await Direct(triton.grpc_address, MODEL).start()
        results.append(in_process(direct, texts))
        await direct.texts(texts[:32])
        results.append(await triton_ceiling(direct, texts, triton.pid))
        for label, n, per_call in shapes:
            with CpuMeter(model=triton.pid) as meter:
                result = await callers(f"direct: {label}", split_among(texts, n, per_call), direct.texts)
            result.extra.update(meter.used)
            results.append(result)

        metrics_port = free_port()
        with router_serve(["--triton", triton.grpc_address], metrics_port=str(metrics_port)) as (target, router):
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.ModelRouterServiceStub(channel)

                async def via_router(batch: list[str]) -> None:
                    await stub.Embed(pb.EmbedRequest(model=MODEL, inputs=batch), timeout=600)

                await via_router(texts[:32])
                for label, n, per_call in shapes:
                    before = scrape_fill(metrics_port)
                    with CpuMeter(model=triton.pid, router=router.pid) as meter:
                        result = await callers(f"router: {label}", split_among(texts, n, per_call), via_router)
                    batches, real, padded = (b - a for a, b in zip(before, scrape_fill(metrics_port), strict=True))
                    result.extra.update(meter.used, batches=batches, fill=real / padded if padded else 0.0)
                    results.append(result)

                # Small calls alone, then the same small calls while one 1,000-text request is served.
                small = split_among(texts[:128], 8, 1)
                results.append(await callers("router: 8 callers x 1 text, idle model", small, via_router))
                say("  one 1,000-text request, and the same small callers meanwhile ...")
                started = time.perf_counter()
                big = asyncio.create_task(via_router(huge))
                await asyncio.sleep(0.5)
                crowded = await callers("router: 8 callers x 1 text, during a 1,000-text call", small, via_router)
                await big
                crowded.extra["huge_call_s"] = time.perf_counter() - started
                results.append(crowded)

        with router_process(triton.grpc_address, cache_max_bytes=64 * 1024 * 1024) as target:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.ModelRouterServiceStub(channel)

                async def cached(batch: list[str]) -> None:
                    await stub.Embed(pb.EmbedRequest(model=MODEL, inputs=batch), timeout=600)

                shape = split_among(texts, 64, 1)
                results.append(await callers("router+cache: 64 callers x 1 text, first pass", shape, cached))
                results.append(await callers("router+cache: 64 callers x 1 text, second pass", shape, cached))
        await direct.close()
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1024, help="texts per path (default 1,024)")
    args = parser.parse_args(argv)
    say(f"batching: {args.count} texts of 6-130 tokens, seed {SEED}")
    results = asyncio.run(run(args.count))
    ceiling, triton = results[0].throughput, results[1].throughput
    for result in results:
        result.extra["vs_in_process"] = result.throughput / ceiling
        result.extra["vs_triton_ceiling"] = result.throughput / triton
    write_report(
        "batching",
        "Many small callers: router vs direct to Triton (all-MiniLM-L6-v2, CPU)",
        [
            f"{args.count} texts of 6-130 tokens (fixed seed {SEED}); each caller sends its calls one after another.",
            "Direct: one Triton call per caller call (the caller pads its own texts), Triton's dynamic batcher on.",
            "Router: `router serve` as its own process; its scheduler batches sequences across callers.",
            "The two `8 callers x 1 text` rows show how long a one-text call waits while a 1,000-text call is "
            "served (fair share across requests: the small call anchors the next batch).",
            "`router+cache`: output cache on (64 MiB); the second pass sends the same texts again.",
            "`in-process onnxruntime`: the ceiling, no network (`vs_in_process`; the aim of 0.9 of it for "
            "`16 callers x 1 text` is retired, the row kept). `Triton's ceiling`: the same batches straight to "
            "Triton, two in flight (`vs_triton_ceiling`).",
            "model_cpu_s: CPU seconds spent computing the model (this process in-process; Triton's processes "
            "otherwise); router_cpu_s: the router's process; batches and fill (real / padded tokens): the "
            "router's own metrics, or the packed batches for the ceilings.",
        ],
        results,
        baseline="direct: 64 callers x 1 text",
    )
    bar_plot("batching", "Small callers: texts/s, higher is better", results, "texts/s")


if __name__ == "__main__":
    main()
