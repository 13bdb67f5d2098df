"""Many routers over one fleet: one router against two routers over the same two Tritons, and what
priorities and tenant rates do under overload.

Rows, each an open loop of Poisson arrivals (fixed seed) of 4-text Embed calls with a 2 s deadline, as in
the admission bench (bench/admission.py), the load split evenly over the routers of the path:

- `one router` and `two routers`, at 0.5x, 1x, 2x and 4x of the capacity one router measures first
  (closed loop): goodput, and the p50 of the calls admitted. Targets: at 2x and 4x, goodput at least
  0.9 of capacity and p50 at most 3x its 0.5x figure, with two routers as with one.
- `tenant rate`: one tenant limited to R = 0.25x capacity calls/s calling at 3R: admitted calls per
  second after the first 2 s (the burst), against R. One router; two routers counting in one Redis;
  two routers each counting on its own (what a fleet without Redis does: about 2R).
- `cache second pass`: 512 texts embedded one a call through one router, then again through the same
  router, through the other (each caching alone), or through the other with the cache's second level in
  the Redis they share (`cache_in_redis`): the share of the second pass answered from the cache.
- `criticality`: one router at 0.5x and 4x, one call in eight CRITICAL (at 4x, half the capacity), two
  SHEDDABLE, the rest DEFAULT: each class's goodput and p50. Target: at 4x, critical calls' goodput and p50 near their
  0.5x figures, sheddable calls taking the shedding.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import grpc

from bench.admission import DEADLINE_S, MAX_OPEN_CALLS, TEXTS_PER_CALL, Outcomes, capacity
from bench.corpus import mixed_texts
from bench.harness import (
    RESULTS,
    SCRATCH,
    PathResult,
    RedisServer,
    router_process,
    say,
    triton_server,
    write_report,
)
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

MODEL = "all-minilm-l6-v2"
SEED = 7
LOADS = (0.5, 1.0, 2.0, 4.0)
CRITICALITIES = {
    "critical": pb.CRITICALITY_CRITICAL,
    "default": pb.CRITICALITY_DEFAULT,
    "sheddable": pb.CRITICALITY_SHEDDABLE,
}
MIX = ["critical", "default", "default", "default", "default", "sheddable", "sheddable", "default"]
"""One call in eight critical (at 4x, half the capacity), two sheddable, five default."""


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server on a free loopback port, keeping nothing on disk; yields its URL."""
    server = RedisServer(SCRATCH / "redis.log").start()
    try:
        yield server.url
    finally:
        server.kill()


class TimedOutcomes(Outcomes):
    """Outcomes, and where each admitted call's time went, as the router's `timing` says: waiting in its
    queue, and in Triton (the batch's time there, its queue included)."""

    def __init__(self) -> None:
        super().__init__()
        self.queue_s: list[float] = []
        self.inference_s: list[float] = []


async def call(stub, request: pb.EmbedRequest, outcomes: Outcomes, metadata=()) -> None:
    started = time.perf_counter()
    try:
        reply = await stub.Embed(request, timeout=DEADLINE_S, metadata=metadata)
        outcomes.ok.append(time.perf_counter() - started)
        if isinstance(outcomes, TimedOutcomes):
            outcomes.queue_s.append(reply.timing.queue.ToTimedelta().total_seconds())
            outcomes.inference_s.append(reply.timing.inference.ToTimedelta().total_seconds())
    except grpc.aio.AioRpcError as error:
        code = error.code().name
        refused_at_once = time.perf_counter() - started < DEADLINE_S * 0.9  # DEADLINE_TOO_SHORT
        if code == "RESOURCE_EXHAUSTED" or (code == "DEADLINE_EXCEEDED" and refused_at_once):
            outcomes.shed.append(time.perf_counter() - started)
        elif code == "DEADLINE_EXCEEDED":
            outcomes.timed_out += 1
        else:
            outcomes.other[code] = outcomes.other.get(code, 0) + 1


async def open_loop(
    stubs: list, rate: float, seconds: float, seed: int, send: Callable[[object, int, float], object]
) -> int:
    """Arrivals at `rate` a second for `seconds`, the n-th to stubs[n % len(stubs)] by `send(stub, n,
    at)` (a coroutine); how many arrived."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task] = []
    started = time.perf_counter()
    next_at, n = 0.0, 0
    while next_at < seconds:
        delay = started + next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if sum(not t.done() for t in tasks[-MAX_OPEN_CALLS:]) < MAX_OPEN_CALLS:
            tasks.append(asyncio.create_task(send(stubs[n % len(stubs)], n, next_at)))
        n += 1
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return n


def result(name: str, outcomes: Outcomes, arrived: int, seconds: float, **extra) -> PathResult:
    total = max(1, len(outcomes.ok) + len(outcomes.shed) + outcomes.timed_out + sum(outcomes.other.values()))
    return PathResult(
        name,
        len(outcomes.ok),
        seconds,
        outcomes.ok,
        {
            "offered_per_s": arrived / seconds,
            "shed_rate": len(outcomes.shed) / total,
            "timeout_rate": outcomes.timed_out / total,
            "other_errors": sum(outcomes.other.values()),
            **extra,
        },
    )


async def loads(
    name: str, targets: list[str], pool, measured: float, seconds: float, tritons: list[str]
) -> list[PathResult]:
    rows = []
    channels = [grpc.aio.insecure_channel(target) for target in targets]
    stubs = [pb_grpc.ModelRouterServiceStub(channel) for channel in channels]
    for stub in stubs:
        await capacity(stub, pool, 2.0)  # warm-up: each router's connections, tokenizer, drain rate
    await asyncio.sleep(DEADLINE_S)
    for load in LOADS:
        outcomes = TimedOutcomes()

        def send(stub, n, at, outcomes=outcomes):
            return call(stub, pb.EmbedRequest(model=MODEL, inputs=pool[n % len(pool)]), outcomes)

        before = triton_counts(tritons)
        arrived = await open_loop(stubs, load * measured, seconds, SEED + int(load * 10), send)
        where = {"queue_p50_ms": _p50_ms(outcomes.queue_s), "triton_p50_ms": _p50_ms(outcomes.inference_s)}
        where |= triton_split(before, triton_counts(tritons))
        row = result(f"{name}, {load}x load", outcomes, arrived, seconds, load=load, capacity_per_s=measured, **where)
        rows.append(row)
        say(
            f"  {row.name}: goodput {row.throughput:.1f}/s ({row.throughput / measured:.2f} of capacity), "
            f"p50 {row.percentile_ms(50):.0f} ms (in the router's queue {where['queue_p50_ms']:.0f}, "
            f"at Triton {where['triton_p50_ms']:.0f}: its queue {where['triton_queue_ms']:.0f} a request on average, "
            f"compute {where['triton_compute_ms']:.0f}, {where['triton_requests_per_execution']:.2f} requests an "
            f"execution), shed {row.extra['shed_rate']:.0%}"
        )
        await asyncio.sleep(DEADLINE_S + 1)
    for channel in channels:
        await channel.close()
    return rows


def triton_counts(addresses: list[str]) -> tuple[int, int, int, int]:
    """The embedder's counters summed over the Tritons: (requests, executions, queue ns, compute ns).
    Differences over a row give each request's mean wait in Triton's queue and each execution's compute."""
    import tritonclient.grpc as triton_grpc

    totals = [0, 0, 0, 0]
    for address in addresses:
        client = triton_grpc.InferenceServerClient(address)
        try:
            (stats,) = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
        finally:
            client.close()
        inference = stats.get("inference_stats", {})
        totals[0] += int(inference.get("success", {}).get("count", 0))
        totals[1] += int(stats.get("execution_count", 0))
        totals[2] += int(inference.get("queue", {}).get("ns", 0))
        totals[3] += int(inference.get("compute_infer", {}).get("ns", 0))
    return totals[0], totals[1], totals[2], totals[3]


def triton_split(before: tuple[int, int, int, int], after: tuple[int, int, int, int]) -> dict[str, float]:
    requests, executions, queue_ns, compute_ns = (a - b for a, b in zip(after, before, strict=True))
    return {
        "triton_queue_ms": queue_ns / max(1, requests) / 1e6,
        "triton_compute_ms": compute_ns / max(1, requests) / 1e6,
        "triton_requests_per_execution": requests / max(1, executions),
    }


def _p50_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values) if values else 0.0


async def tenant_rate(name: str, targets: list[str], pool, rate: float, seconds: float) -> PathResult:
    """One tenant limited to `rate` calling at 3x it, split over the routers; admitted after the burst."""
    channels = [grpc.aio.insecure_channel(target) for target in targets]
    stubs = [pb_grpc.ModelRouterServiceStub(channel) for channel in channels]
    outcomes, admitted_after = Outcomes(), []
    tenant = f"bench-{name.replace(' ', '-')}-{time.monotonic_ns()}"

    async def send(stub, n, at):
        before = len(outcomes.ok)
        request = pb.EmbedRequest(model=MODEL, inputs=pool[n % len(pool)][:1])
        await call(stub, request, outcomes, [("x-tenant-id", tenant)])
        if len(outcomes.ok) > before and at >= 2.0:
            admitted_after.append(at)

    arrived = await open_loop(stubs, 3 * rate, seconds, SEED, send)
    for channel in channels:
        await channel.close()
    admitted_per_s = len(admitted_after) / (seconds - 2.0)
    row = result(
        f"tenant rate, {name}",
        outcomes,
        arrived,
        seconds,
        limit_per_s=rate,
        admitted_per_s=admitted_per_s,
        admitted_over_limit=admitted_per_s / rate,
    )
    say(
        f"  {row.name}: limit {rate:.1f}/s, offered {3 * rate:.1f}/s, admitted {admitted_per_s:.1f}/s "
        f"({admitted_per_s / rate:.2f} of the limit)"
    )
    await asyncio.sleep(2)
    return row


async def embed_each(target: str, texts: list[str]) -> tuple[int, list[float], float]:
    """Embed `texts` one a call, 16 at a time: (texts the cache answered, latencies, wall seconds)."""
    hits, latencies = 0, []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)

        async def one(text: str) -> None:
            nonlocal hits
            began = time.perf_counter()
            reply = await stub.Embed(pb.EmbedRequest(model=MODEL, inputs=[text]), timeout=60)
            latencies.append(time.perf_counter() - began)
            hits += reply.usage.cached_sequences

        started = time.perf_counter()
        for start in range(0, len(texts), 16):
            await asyncio.gather(*(one(text) for text in texts[start : start + 16]))
        return hits, latencies, time.perf_counter() - started


async def cache_pass(name: str, first: str, second: str, texts: list[str]) -> PathResult:
    """`texts` through `first`, then again through `second`: how many the cache answered the second time."""
    await embed_each(first, texts)
    await asyncio.sleep(1)  # rows are written to Redis off the calls' path
    hits, latencies, wall = await embed_each(second, texts)
    row = PathResult(f"cache second pass, {name}", len(texts), wall, latencies, {"hit_rate": hits / len(texts)})
    say(f"  {row.name}: {hits} of {len(texts)} texts from the cache, {row.throughput:.0f} texts/s")
    return row


async def cache_rows(tritons: list[str], shared: dict[str, str], pool) -> list[PathResult]:
    texts = [text for call in pool[:128] for text in call]  # 512 texts
    cached = {"cache_max_bytes": str(64 << 20)}
    rows = []
    with router_process(tritons, **cached) as one, router_process(tritons, **cached) as two:
        rows.append(await cache_pass("the same router", one, one, texts))
        rows.append(await cache_pass("the other router, no Redis", one, two, texts))
    both = {**cached, **shared, "cache_in_redis": "true"}
    with router_process(tritons, **both) as one, router_process(tritons, **both) as two:
        rows.append(await cache_pass("the other router, cache in Redis", one, two, texts))
    return rows


async def criticality(target: str, pool, measured: float, seconds: float) -> list[PathResult]:
    rows = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        for load in (0.5, 4.0):
            outcomes = {kind: Outcomes() for kind in CRITICALITIES}
            arrivals = dict.fromkeys(CRITICALITIES, 0)

            def send(stub, n, at, outcomes=outcomes, arrivals=arrivals):
                kind = MIX[n % len(MIX)]
                arrivals[kind] += 1
                request = pb.EmbedRequest(model=MODEL, inputs=pool[n % len(pool)], criticality=CRITICALITIES[kind])
                return call(stub, request, outcomes[kind])

            await open_loop([stub], load * measured, seconds, SEED + 100 + int(load * 10), send)
            for kind in CRITICALITIES:
                row = result(f"criticality {kind}, {load}x load", outcomes[kind], arrivals[kind], seconds, load=load)
                rows.append(row)
                say(
                    f"  {row.name}: goodput {row.throughput:.1f}/s of {row.extra['offered_per_s']:.1f} offered, "
                    f"p50 {row.percentile_ms(50):.0f} ms, shed {row.extra['shed_rate']:.0%}"
                )
            await asyncio.sleep(DEADLINE_S + 1)
    return rows


PARTS = ("loads", "criticality", "cache", "tenant")


async def run(seconds: float, parts: Sequence[str] = PARTS) -> tuple[list[PathResult], float]:
    pool = [mixed_texts(TEXTS_PER_CALL, 18, 118, SEED + i) for i in range(2000)]
    rows: list[PathResult] = []
    with triton_server() as first, triton_server(log_name="triton-2.log") as second, redis_server() as redis_url:
        tritons = [first.grpc_address, second.grpc_address]
        shared = {"redis_url": redis_url}
        with router_process(tritons) as target:
            async with grpc.aio.insecure_channel(target) as channel:
                measured = await capacity(pb_grpc.ModelRouterServiceStub(channel), pool, seconds)
            say(f"capacity, one router over two Tritons: {measured:.1f} calls/s")
            if "loads" in parts:
                rows += await loads("one router", [target], pool, measured, seconds, tritons)
            if "criticality" in parts:
                rows += await criticality(target, pool, measured, seconds)
        if "loads" in parts:
            with router_process(tritons, **shared) as one, router_process(tritons, **shared) as two:
                rows += await loads("two routers", [one, two], pool, measured, seconds, tritons)
        if "cache" in parts:
            rows += await cache_rows(tritons, shared, pool)
        if "tenant" not in parts:
            return rows, measured
        limit = max(2, round(0.25 * measured))  # whole calls per second: a window holds a whole number
        rate = {"tenant_requests_per_s": str(limit)}
        with router_process(tritons, **rate) as target:
            rows.append(await tenant_rate("one router", [target], pool, limit, seconds))
        with router_process(tritons, **rate, **shared) as one, router_process(tritons, **rate, **shared) as two:
            rows.append(await tenant_rate("two routers sharing Redis", [one, two], pool, limit, seconds))
        with router_process(tritons, **rate) as one, router_process(tritons, **rate) as two:
            rows.append(await tenant_rate("two routers without Redis", [one, two], pool, limit, seconds))
    return rows, measured


def plot(rows: list[dict], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = any("queue_p50_ms" in r for r in rows)  # runs since the time split was recorded
    fig, axes = plt.subplots(1, 3 if timed else 2, figsize=(16 if timed else 11, 4))
    goodput, latency, split = (*axes, None) if not timed else axes
    for offset, path in ((-0.12, "one router"), (0.12, "two routers")):
        mine = [r for r in rows if r["name"].startswith(f"{path},")]
        x = [r["load"] for r in mine]
        goodput.plot(x, [r["items_per_s"] / r["capacity_per_s"] for r in mine], marker="o", label=path)
        latency.plot(x, [r["p50_ms"] for r in mine], marker="o", label=path)
        if timed and mine:
            at = [i + offset for i in range(len(mine))]
            queue = [r["queue_p50_ms"] for r in mine]
            split.bar(at, queue, width=0.22, label=f"{path}: router queue")
            split.bar(at, [r["triton_p50_ms"] for r in mine], width=0.22, bottom=queue, label=f"{path}: at Triton")
            split.set_xticks(range(len(mine)), [f"{r['load']}x" for r in mine])
    goodput.axhline(0.9, color="grey", linestyle=":", label="0.9 of capacity")
    goodput.set(xlabel="offered load (x capacity)", ylabel="goodput / capacity", title="Goodput")
    latency.set(xlabel="offered load (x capacity)", ylabel="p50 of admitted calls (ms)", title="Latency")
    for ax in (goodput, latency):
        ax.set_xticks(LOADS, [f"{x}x" for x in LOADS])
    if timed:
        split.set(xlabel="offered load (x capacity)", ylabel="p50 (ms)", title="Where admitted calls' time went")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per row (default 15)")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"which rows, of {','.join(PARTS)} (default all, into bench/results/fleet.*; fewer: fleet-<parts>.*)",
    )
    args = parser.parse_args(argv)
    parts = [part for part in args.parts.split(",") if part]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}")
    name = "fleet" if set(parts) == set(PARTS) else "fleet-" + "-".join(parts)
    rows, measured = asyncio.run(run(args.seconds, parts))
    write_report(
        name,
        "Many routers over one fleet: one router vs two over the same two Tritons (all-MiniLM-L6-v2, CPU)",
        [
            f"Capacity of one router over both Tritons (16 closed-loop callers): {measured:.1f} calls/s of "
            f"{TEXTS_PER_CALL} texts. Open-loop Poisson arrivals, each call with a {DEADLINE_S:.0f} s deadline, "
            f"{args.seconds:.0f} s per row, split evenly over the path's routers.",
            "tenant rate rows: one tenant limited to 0.25x capacity (tenant_requests_per_s) calling at 3x its "
            "limit; admitted_per_s counts calls admitted after the first 2 s (the burst the limit allows).",
            "criticality rows: one router; one call in eight CRITICAL, two SHEDDABLE, five DEFAULT.",
            "queue_p50_ms / triton_p50_ms: where admitted calls' time went, from the router's own `timing` (its "
            "queue; the batch at Triton, Triton's queue included). triton_queue_ms / triton_compute_ms: from "
            "Triton's own statistics over the row, each batch request's mean wait in Triton's queue and its "
            "compute; triton_requests_per_execution: batch requests Triton ran together in one execution.",
            "Ratios are goodput / `one router, 1.0x load`.",
        ],
        rows,
        baseline="one router, 1.0x load",
    )
    if "loads" in parts:
        plot(json.loads((RESULTS / f"{name}.json").read_text())["paths"], name)


if __name__ == "__main__":
    main()
