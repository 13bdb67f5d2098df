"""Soak: hold 80% of measured capacity for 10 minutes with mixed traffic (Embed, Rerank and Generate from
several tenants), and watch the router for leaks: RSS, open file descriptors, asyncio tasks, and latency
over time. Capacity is measured first, in the same run.

Open loop: calls arrive as a Poisson process (fixed seed) at 80% of the calls/s the mix reached with a
closed loop of 16 callers. Every 10 s the router's process is sampled (RSS and descriptors from /proc,
tasks from its `modelrouter_asyncio_tasks` metric). Aims: RSS growth at most 10% (last minute against the
first minute after warm-up), no growth of descriptors or tasks, p99 stable (last third against the first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import urllib.request
from pathlib import Path

import grpc

from adapters.triton.embedded import free_port
from bench.corpus import mixed_texts
from bench.harness import RESULTS, machine, router_serve, say, triton_server
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

SEED = 11
LOAD = 0.8
TENANTS = ("search", "ingest", "chat")
DEADLINE_S = 10.0
SAMPLE_S = 10.0
MAX_OPEN_CALLS = 400


def requests(seed: int) -> list[tuple[str, object]]:
    """A fixed mix: 6 embeds of 8 texts, 3 reranks of 8 documents, 1 generation of 16 tokens, per 10 calls."""
    rng = random.Random(seed)
    mix: list[tuple[str, object]] = []
    for i in range(200):
        texts = mixed_texts(8, 20, 120, seed=seed * 1000 + i)
        kind = rng.choices(["embed", "rerank", "generate"], weights=[6, 3, 1])[0]
        if kind == "embed":
            mix.append(("Embed", pb.EmbedRequest(model="all-minilm-l6-v2", inputs=texts)))
        elif kind == "rerank":
            mix.append(("Rerank", pb.RerankRequest(model="minilm-reranker", query=texts[0][:80], documents=texts)))
        else:
            prompt = f"Say something about {texts[0][:40]}"
            mix.append(("Generate", pb.GenerateRequest(model="smollm2-135m-instruct", prompt=prompt, max_tokens=16)))
    return mix


async def send(stub, method: str, request, tenant: str) -> str:
    metadata = (("x-tenant-id", tenant),)
    try:
        if method == "Generate":
            async for _ in stub.Generate(request, timeout=DEADLINE_S, metadata=metadata):
                pass
        else:
            await getattr(stub, method)(request, timeout=DEADLINE_S, metadata=metadata)
        return "OK"
    except grpc.aio.AioRpcError as error:
        return error.code().name


async def capacity(stub, mix, seconds: float) -> float:
    done, stop = 0, time.perf_counter() + seconds
    rng = random.Random(SEED)

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            method, request = rng.choice(mix)
            if await send(stub, method, request, rng.choice(TENANTS)) == "OK":
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(16)))
    return done / (time.perf_counter() - started)


def sample(pid: int, metrics_url: str) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    tasks = float("nan")
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("modelrouter_asyncio_tasks "):
                tasks = float(line.split()[1])
    return {"rss_mib": rss_kib / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")), "tasks": tasks}


async def soak(stub, mix, rate: float, seconds: float, pid: int, metrics_url: str) -> tuple[list[dict], list]:
    rng = random.Random(SEED + 1)
    calls: list[tuple[float, float, str, str]] = []  # (started offset, latency, method, outcome)
    samples: list[dict] = []
    pending: set[asyncio.Task] = set()
    started = time.perf_counter()

    async def one(method, request, tenant) -> None:
        sent = time.perf_counter()
        outcome = await send(stub, method, request, tenant)
        calls.append((sent - started, time.perf_counter() - sent, method, outcome))

    next_sample = 0.0
    now = 0.0
    while now < seconds:
        now = time.perf_counter() - started
        if now >= next_sample:
            samples.append({"t_s": round(now, 1), **sample(pid, metrics_url), "open_calls": len(pending)})
            say(f"  {now:5.0f} s: {samples[-1]}  calls so far {len(calls)}")
            next_sample += SAMPLE_S
        if len(pending) < MAX_OPEN_CALLS:
            method, request = rng.choice(mix)
            task = asyncio.create_task(one(method, request, rng.choice(TENANTS)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*pending)
    await asyncio.sleep(2)
    samples.append({"t_s": round(time.perf_counter() - started, 1), **sample(pid, metrics_url), "open_calls": 0})
    return samples, calls


def windows(calls, seconds: float, width: float = 30.0) -> list[dict]:
    rows = []
    for start in range(0, int(seconds), int(width)):
        inside = sorted(lat for t, lat, _, outcome in calls if start <= t < start + width and outcome == "OK")
        failed = sum(1 for t, _, _, outcome in calls if start <= t < start + width and outcome != "OK")
        if inside:
            rows.append(
                {
                    "t_s": start,
                    "ok": len(inside),
                    "failed": failed,
                    "p50_ms": round(1000 * inside[len(inside) // 2], 1),
                    "p99_ms": round(1000 * inside[min(len(inside) - 1, int(len(inside) * 0.99))], 1),
                }
            )
    return rows


def verdict(samples: list[dict], latency: list[dict], warmup_s: float) -> dict:
    settled = [s for s in samples if s["t_s"] >= warmup_s] or samples
    minute = max(1, int(60 / SAMPLE_S))
    first_rss = min(s["rss_mib"] for s in settled[:minute])
    last_rss = max(s["rss_mib"] for s in settled[-minute:])
    third = max(1, len(latency) // 3)
    p99_first = sorted(w["p99_ms"] for w in latency[:third])[third // 2]
    p99_last = sorted(w["p99_ms"] for w in latency[-third:])[third // 2]
    return {
        "rss_growth": round(last_rss / first_rss - 1, 4),
        "fds_first_last": [settled[0]["fds"], samples[-1]["fds"]],
        "tasks_first_last": [settled[0]["tasks"], samples[-1]["tasks"]],
        "p99_first_third_ms": p99_first,
        "p99_last_third_ms": p99_last,
        "p99_ratio": round(p99_last / p99_first, 3),
    }


def plot(samples: list[dict], latency: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    t = [s["t_s"] for s in samples]
    panels = (("rss_mib", "RSS (MiB)"), ("fds", "open fds"), ("tasks", "asyncio tasks"))
    for ax, (key, label) in zip(axes[:3], panels, strict=True):
        ax.plot(t, [s[key] for s in samples], marker=".")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    wt = [w["t_s"] + 15 for w in latency]
    axes[3].plot(wt, [w["p50_ms"] for w in latency], label="p50")
    axes[3].plot(wt, [w["p99_ms"] for w in latency], label="p99")
    axes[3].set_ylabel("latency (ms), 30 s windows")
    axes[3].set_xlabel("seconds into the soak")
    axes[3].legend()
    fig.suptitle("Soak: the router at 80% of measured capacity, mixed Embed/Rerank/Generate, 3 tenants")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def run(minutes: float) -> dict:
    mix = requests(SEED)
    metrics_port = free_port()
    with (
        triton_server() as triton,
        router_serve(["--triton", triton.grpc_address], metrics_port=str(metrics_port)) as (target, process),
    ):
        channel = grpc.aio.insecure_channel(target)
        stub = pb_grpc.ModelRouterServiceStub(channel)
        say("measuring capacity (16 callers, 30 s) ...")
        await capacity(stub, mix, 5)  # warm
        full = await capacity(stub, mix, 30)
        rate = LOAD * full
        seconds = minutes * 60
        say(f"capacity {full:.1f} calls/s; soaking at {rate:.1f} calls/s for {seconds:.0f} s")
        samples, calls = await soak(stub, mix, rate, seconds, process.pid, f"http://127.0.0.1:{metrics_port}/metrics")
        await channel.close()
    latency = windows(calls, seconds)
    outcomes: dict[str, int] = {}
    for _, _, method, outcome in calls:
        outcomes[f"{method} {outcome}"] = outcomes.get(f"{method} {outcome}", 0) + 1
    return {
        "run": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "capacity_calls_per_s": round(full, 2),
        "offered_calls_per_s": round(rate, 2),
        "seconds": seconds,
        "calls": len(calls),
        "outcomes": dict(sorted(outcomes.items())),
        "verdict": verdict(samples, latency, warmup_s=60),
        "samples": samples,
        "latency_windows": latency,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.minutes))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report["samples"], report["latency_windows"], RESULTS / "soak.png")
    v = report["verdict"]
    lines = [
        "# Soak: 80% of measured capacity, mixed traffic, several tenants",
        "",
        f"Run {report['run']} on {report['machine']}: capacity {report['capacity_calls_per_s']} calls/s "
        f"(16 closed-loop callers), offered {report['offered_calls_per_s']} calls/s for {report['seconds']:.0f} s, "
        f"{report['calls']} calls. [Plot](soak.png).",
        "",
        f"- Outcomes: {report['outcomes']}",
        f"- RSS growth, last minute vs first minute after a minute's warm-up: {v['rss_growth']:.1%} (aim <= 10%)",
        f"- Open descriptors, first and last sample: {v['fds_first_last']}; asyncio tasks: {v['tasks_first_last']}",
        f"- p99 of 30 s windows, median of the first third {v['p99_first_third_ms']} ms, of the last third "
        f"{v['p99_last_third_ms']} ms (ratio {v['p99_ratio']})",
    ]
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
