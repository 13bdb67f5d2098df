"""Shards: balancing when one shard is slowed 3x, failover when one is killed, the router's CPU per batch.

Balancing: two real tritonservers, one slowed (model.py's test-only `test_delay_per_batch_s`, set to twice
the time the other takes per batch, measured first in the same run). Closed loop, 16 callers, each call
embeds 8 texts of 20-120 tokens through a `router serve` process. Measured: each shard alone behind the
router, then both with token-weighted balancing (`least_work`, the default) and with round robin. Target:
least_work at least 0.9 of the two shards' summed capacity; round robin is held to about twice the slow one's.
Each server is pinned to a core of its own with one onnxruntime thread, so that the two behave as separate
machines would (unpinned, they would share the same two cores and their capacities could not add up).

Failover: `router serve --embedded-shards 2` under the same closed loop; one tritonserver is SIGKILLed
mid-run. Measured: failed calls, goodput over time (plotted), p99 latency in the 2 s after the kill,
the time until the supervisor has the server ready again and until it serves its first batch after that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio

from bench.corpus import mixed_texts
from bench.harness import (
    RESULTS,
    SCRATCH,
    cpu_seconds,
    linked_repository,
    machine,
    router_serve,
    say,
    triton_server,
)
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

MODEL = "all-minilm-l6-v2"
CALLERS = 16
TEXTS_PER_CALL = 8
SEED = 7


async def served(address: str) -> tuple[int, int]:
    """(requests, executions) Triton has run for MODEL: a router batch is one request."""
    client = triton_aio.InferenceServerClient(address)
    try:
        stats = await client.get_inference_statistics(MODEL, as_json=True)
    finally:
        await client.close()
    [model] = stats["model_stats"]
    return int(model["inference_stats"]["success"].get("count", 0)), int(model.get("execution_count", 0))


class Calls:
    """Every call's end time (since the start), latency and whether it succeeded."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.latencies: list[float] = []
        self.ok: list[bool] = []
        self.codes: dict[str, int] = {}


async def closed_loop(target: str, pool: list[list[str]], seconds: float, calls: Calls | None = None) -> float:
    """CALLERS callers, each calling again as soon as answered; returns successful calls per second."""
    calls = calls or Calls()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ModelRouterServiceStub(channel)
        started = time.perf_counter()
        stop = started + seconds

        async def caller(index: int) -> None:
            while time.perf_counter() < stop:
                begun = time.perf_counter()
                try:
                    await stub.Embed(pb.EmbedRequest(model=MODEL, inputs=pool[index % len(pool)]), timeout=30)
                    ok = True
                except grpc.aio.AioRpcError as error:
                    ok = False
                    calls.codes[error.code().name] = calls.codes.get(error.code().name, 0) + 1
                    # A well-behaved caller waits as long as the router's RetryInfo asks before calling again.
                    await asyncio.sleep(_retry_delay(error))
                now = time.perf_counter()
                calls.ends.append(now - started)
                calls.latencies.append(now - begun)
                calls.ok.append(ok)
                index += CALLERS

        await asyncio.gather(*(caller(i) for i in range(CALLERS)))
        return sum(calls.ok) / (time.perf_counter() - started)


def _retry_delay(error: grpc.aio.AioRpcError) -> float:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    retry = error_details_pb2.RetryInfo()
    for detail in status.details if status else ():
        if detail.Unpack(retry):
            return retry.retry_delay.ToTimedelta().total_seconds()
    return 0.1


async def behind_router(
    addresses: list[str], pool: list[list[str]], seconds: float, label: str, **settings: str
) -> dict:
    """Closed-loop capacity through a router over these shards, with the router's CPU per batch."""
    arguments = [arg for address in addresses for arg in ("--triton", address)]
    with router_serve(arguments, **settings) as (target, process):
        await closed_loop(target, pool, 2.0)  # warm-up
        before = [await served(a) for a in addresses]
        cpu_before = cpu_seconds(process.pid)
        calls = Calls()
        rate = await closed_loop(target, pool, seconds, calls)
        cpu = cpu_seconds(process.pid) - cpu_before
        after = [await served(a) for a in addresses]
    batches = [b[0] - a[0] for a, b in zip(before, after, strict=True)]
    executions = [b[1] - a[1] for a, b in zip(before, after, strict=True)]
    row = {
        "path": label,
        "calls_per_s": round(rate, 2),
        "texts_per_s": round(rate * TEXTS_PER_CALL, 1),
        "batches_per_shard": batches,
        "router_cpu_ms_per_batch": round(1000 * cpu / max(1, sum(batches)), 2),
        "seconds_per_execution": [round(seconds / e, 4) if e else None for e in executions],
        "refused": calls.codes,
    }
    say(
        f"  {label}: {rate:.1f} calls/s, batches per shard {batches}, "
        f"{row['router_cpu_ms_per_batch']} ms CPU/batch, refused {calls.codes}"
    )
    return row


def one_core_repository(name: str, delay_s: float = 0.0) -> Path:
    """A repository holding the embedder only, on one onnxruntime thread (its server is pinned to one
    core), and with model.py told to sleep `delay_s` per batch when slowed."""
    parameters = {"onnx_intra_op_threads": "1", "test_delay_per_batch_s": f"{delay_s:.4f}"}
    return linked_repository(SCRATCH / name, {MODEL: parameters})


async def balancing(seconds: float) -> dict:
    pool = [mixed_texts(TEXTS_PER_CALL, 18, 118, SEED + i) for i in range(500)]
    # Each server on a core of its own, as if on machines of their own (the router and the callers share
    # both cores with them).
    cores = sorted(os.sched_getaffinity(0))
    fast_core, slow_core = (frozenset({cores[0]}), frozenset({cores[1]})) if len(cores) > 1 else (None, None)
    with triton_server(one_core_repository("fast-repository"), "triton-fast.log", fast_core) as fast:
        say("calibrating: the fast shard's time per batch at capacity ...")
        calibration = await behind_router([fast.grpc_address], pool, seconds, "calibration")
        per_execution = calibration["seconds_per_execution"][0]
        delay = 2 * per_execution
        say(f"  {per_execution * 1000:.1f} ms per batch: the slowed shard sleeps {delay * 1000:.1f} ms more per batch")
        slowed = one_core_repository("slowed-repository", delay)
        with triton_server(slowed, "triton-slowed.log", slow_core) as slow:
            rows = [
                await behind_router([fast.grpc_address], pool, seconds, "fast shard alone"),
                await behind_router([slow.grpc_address], pool, seconds, "slowed shard alone"),
            ]
            both = [fast.grpc_address, slow.grpc_address]
            rows.append(await behind_router(both, pool, seconds, "both, least_work", shard_balancing="least_work"))
            rows.append(await behind_router(both, pool, seconds, "both, round_robin", shard_balancing="round_robin"))
    total = rows[0]["calls_per_s"] + rows[1]["calls_per_s"]
    return {
        "delay_ms": round(delay * 1000, 1),
        "slowdown": round(rows[0]["calls_per_s"] / max(1e-9, rows[1]["calls_per_s"]), 2),
        "rows": rows,
        "least_work_of_sum": round(rows[2]["calls_per_s"] / total, 3),
        "round_robin_of_sum": round(rows[3]["calls_per_s"] / total, 3),
        "round_robin_of_slow": round(rows[3]["calls_per_s"] / rows[1]["calls_per_s"], 2),
    }


def embedded_servers(router_pid: int) -> list[tuple[int, str]]:
    """(pid, grpc address) of the tritonservers a router process started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != router_pid:
                continue
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command and command[0].endswith(b"tritonserver"):
            port = next(a.split(b"=")[1].decode() for a in command if a.startswith(b"--grpc-port="))
            found.append((int(stat.parent.name), f"127.0.0.1:{port}"))
    return sorted(found)


async def failover(seconds: float, kill_at: float) -> dict:
    pool = [mixed_texts(TEXTS_PER_CALL, 18, 118, SEED + 1000 + i) for i in range(500)]
    with router_serve(["--embedded-shards", "2"]) as (target, process):
        servers = embedded_servers(process.pid)
        assert len(servers) == 2, servers
        (victim_pid, victim), _ = servers
        await closed_loop(target, pool, 2.0)  # warm-up
        calls = Calls()
        marks: dict[str, float] = {}
        started = time.perf_counter()

        async def killer() -> None:
            await asyncio.sleep(kill_at)
            os.kill(victim_pid, signal.SIGKILL)
            marks["kill"] = time.perf_counter() - started
            say(f"  SIGKILL to tritonserver {victim_pid} ({victim}) at {marks['kill']:.2f} s")
            client = triton_aio.InferenceServerClient(victim)
            try:
                while "ready" not in marks:
                    try:
                        if await client.is_server_ready(client_timeout=0.5):
                            marks["ready"] = time.perf_counter() - started
                            first = await served(victim)
                    except Exception:  # noqa: BLE001 - not back yet
                        pass
                    await asyncio.sleep(0.05)
                while "rejoined" not in marks and time.perf_counter() - started < seconds:
                    if (await served(victim))[0] > first[0]:
                        marks["rejoined"] = time.perf_counter() - started
                    await asyncio.sleep(0.05)
            finally:
                await client.close()

        await asyncio.gather(closed_loop(target, pool, seconds, calls), killer())
    ends, latencies, ok = np.array(calls.ends), np.array(calls.latencies), np.array(calls.ok)
    kill = marks["kill"]
    bin_s = 1.0
    edges = np.arange(0, seconds + bin_s, bin_s)
    goodput = np.histogram(ends[ok], edges)[0] / bin_s
    before = goodput[(edges[:-1] >= 1.0) & (edges[1:] <= kill)].mean()
    after = [(start, value) for start, value in zip(edges[:-1], goodput, strict=True) if start >= kill]
    dip = min(value for _, value in after[:3])
    recovered = next((start + bin_s - kill for start, value in after if value >= 0.9 * before), None)
    window = (ends >= kill) & (ends < kill + 2.0)
    result = {
        "calls": int(len(ok)),
        "failed": int((~ok).sum()),
        "failed_by_code": calls.codes,
        "goodput_before_calls_per_s": round(float(before), 2),
        "lowest_goodput_after_kill_calls_per_s": round(float(dip), 2),
        "seconds_to_90pct_goodput": None if recovered is None else round(float(recovered), 2),
        "p99_ms_before_kill": round(float(np.percentile(latencies[ends < kill], 99) * 1000), 1),
        "p99_ms_2s_after_kill": round(float(np.percentile(latencies[window], 99) * 1000), 1) if window.any() else None,
        "seconds_kill_to_server_ready": round(marks["ready"] - kill, 2) if "ready" in marks else None,
        "seconds_ready_to_first_batch": round(marks["rejoined"] - marks["ready"], 2) if "rejoined" in marks else None,
    }
    _plot(edges, goodput, marks, result)
    return result


def _plot(edges: np.ndarray, goodput: np.ndarray, marks: dict[str, float], result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.step(edges[:-1], goodput, where="post", color="tab:blue", label="calls answered per second (1 s bins)")
    for name, color in (("kill", "tab:red"), ("ready", "tab:orange"), ("rejoined", "tab:green")):
        if name in marks:
            ax.axvline(marks[name], color=color, linestyle="--", label=f"{name} at {marks[name]:.1f} s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("calls/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Failover: one of two tritonservers SIGKILLed; {result['failed']} of {result['calls']} calls failed")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "shards.png", dpi=110)
    plt.close(fig)


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    b, f = result["balancing"], result["failover"]
    lines = [
        "# Shards: balancing with one shard slowed, failover, router CPU per batch",
        "",
        f"Run {stamp} on {machine()}. Closed loop, {CALLERS} callers, {TEXTS_PER_CALL} texts of 20-120 tokens "
        "per call; a refused caller waits the RetryInfo delay before calling again.",
        "",
        f"Slowed shard: {b['delay_ms']} ms of sleep per batch, {b['slowdown']}x slower than the fast one alone.",
        "",
        "| path | calls/s | texts/s | batches per shard | router CPU ms per batch | refused |",
        "|---|---|---|---|---|---|",
    ]
    for row in b["rows"]:
        lines.append(
            f"| {row['path']} | {row['calls_per_s']} | {row['texts_per_s']} | {row['batches_per_shard']} | "
            f"{row['router_cpu_ms_per_batch']} | {sum(row['refused'].values())} |"
        )
    lines += [
        "",
        f"- least_work: **{b['least_work_of_sum']:.2f}** of the two shards' summed capacity (target 0.9).",
        f"- round_robin: {b['round_robin_of_sum']:.2f} of the sum, {b['round_robin_of_slow']}x the slowed shard alone.",
        "",
        "Failover (`router serve --embedded-shards 2`, one tritonserver SIGKILLed mid-run; plot: shards.png):",
        "",
        f"- calls: {f['calls']}, failed: **{f['failed']}** {f['failed_by_code'] or ''}",
        f"- goodput before the kill {f['goodput_before_calls_per_s']} calls/s; lowest 1 s bin in the 3 s after "
        f"{f['lowest_goodput_after_kill_calls_per_s']}; back to 90% after {f['seconds_to_90pct_goodput']} s",
        f"- p99 latency: {f['p99_ms_before_kill']} ms before the kill, {f['p99_ms_2s_after_kill']} ms in the 2 s after",
        f"- killed server ready again after {f['seconds_kill_to_server_ready']} s (supervisor restart, model load); "
        f"its first batch {f['seconds_ready_to_first_batch']} s after that",
    ]
    (RESULTS / "shards.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "shards.json").write_text(json.dumps({"run": stamp, **result}, indent=2))
    say("wrote bench/results/shards.md, shards.json, shards.png")
    print("\n".join(lines), flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench shards")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each closed-loop measurement")
    args, _ = parser.parse_known_args(argv)
    say("shards: balancing with one shard slowed 3x ...")
    result = {"balancing": asyncio.run(balancing(args.seconds))}
    say("shards: failover ...")
    result["failover"] = asyncio.run(failover(seconds=max(16.0, args.seconds + 6), kill_at=6.0))
    write(result)
