"""Admission under overload: offered load at 0.5x, 1x, 2x and 4x of measured capacity, with the router's
admission control on and off, in one run; goodput, latency of the calls that succeeded, shed rate.

Open loop: calls arrive as a Poisson process (fixed seed) whatever happens to earlier ones, as traffic
from many services does. Each call embeds 4 texts of 20-120 tokens and carries a 2 s deadline. The load
is bounded in count and time and stays on loopback. "Off" is a plain proxy: every call is queued, and
a call leaves the queue only when its caller gives up.

A refusal's latency is measured three ways: by the load generator (send to error), by a light caller in a
process of its own (bench/probe.py: one short call every 0.25 s, with nothing else to do, so its figure
leaves out the generator's own turns; its calls are not counted in goodput, and add 2-8% to the calls
the router handles at 1x-4x), and by the router itself,
from the `ms` of its log line for each call (the router runs with info logs): the time inside the
router's handler, without the network, gRPC's own queues and the processes' turns on the shared cores.

With admission on, 2x and 4x run `--rounds` times (3), alternating with the same load from callers whose
channel carries the client-side adaptive throttle (router/grpc/client/throttle.py): they refuse calls
themselves, before sending them, once the router accepts fewer than half, so the router spends less of
the shared cores on refusals. Each row holds all its runs: one 15 s run strays by 10-20% of capacity on
this machine. The light caller stays unthrottled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2

from bench.corpus import mixed_texts
from bench.harness import (
    PROJECT_ROOT,
    RESULTS,
    ROUTER_LOG,
    PathResult,
    router_process,
    say,
    triton_server,
    write_report,
)
from router.grpc.client.throttle import REASON as CLIENT_THROTTLED
from router.grpc.client.throttle import ThrottlingInterceptor
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc

MODEL = "all-minilm-l6-v2"
SEED = 99
DEADLINE_S = 2.0
TEXTS_PER_CALL = 4
LOADS = (0.5, 1.0, 2.0, 4.0)
THROTTLED_LOADS = (2.0, 4.0)  # admission on, callers with router.grpc.client.throttle (k = 2)
MAX_OPEN_CALLS = 1000
PROBE_INTERVAL_S = 0.25


class Outcomes:
    def __init__(self) -> None:
        self.ok: list[float] = []
        self.shed: list[float] = []  # refused by the router: RESOURCE_EXHAUSTED, or its DEADLINE_TOO_SHORT
        self.timed_out = 0  # the caller's deadline passed while it waited
        self.throttled = 0  # refused by the caller's own adaptive throttle, never sent
        self.other: dict[str, int] = {}
        self.reasons: dict[str, int] = {}  # refusals by ErrorInfo.reason

    def merge(self, other: Outcomes) -> None:
        self.ok += other.ok
        self.shed += other.shed
        self.timed_out += other.timed_out
        self.throttled += other.throttled
        for mine, theirs in ((self.other, other.other), (self.reasons, other.reasons)):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count


async def one_call(stub, texts: list[str], outcomes: Outcomes) -> None:
    started = time.perf_counter()
    try:
        await stub.Embed(pb.EmbedRequest(model=MODEL, inputs=texts), timeout=DEADLINE_S)
        outcomes.ok.append(time.perf_counter() - started)
    except grpc.aio.AioRpcError as error:
        code = error.code()
        latency = time.perf_counter() - started
        if _refused(code.name, latency):
            reason = _reason(error)
            if reason == CLIENT_THROTTLED:
                outcomes.throttled += 1
                return
            outcomes.shed.append(latency)
            outcomes.reasons[reason] = outcomes.reasons.get(reason, 0) + 1
        elif code is grpc.StatusCode.DEADLINE_EXCEEDED:
            outcomes.timed_out += 1
        else:
            outcomes.other[code.name] = outcomes.other.get(code.name, 0) + 1


async def capacity(stub, pool: list[list[str]], seconds: float) -> float:
    """Closed loop, 16 callers: calls completed per second when the model is kept busy."""
    done = 0
    stop = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await stub.Embed(pb.EmbedRequest(model=MODEL, inputs=pool[index % len(pool)]), timeout=60)
            done += 1
            index += 16

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(16)))
    return done / (time.perf_counter() - started)


async def open_loop(stub, pool: list[list[str]], rate: float, seconds: float, seed: int, outcomes: Outcomes) -> int:
    """Calls arriving at `rate` per second for `seconds`, their outcomes added to `outcomes`; how many
    arrived."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task] = []
    started = time.perf_counter()
    next_at = 0.0
    index = 0
    while next_at < seconds:
        delay = started + next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if sum(not t.done() for t in tasks[-MAX_OPEN_CALLS:]) < MAX_OPEN_CALLS:
            tasks.append(asyncio.create_task(one_call(stub, pool[index % len(pool)], outcomes)))
        index += 1
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return index


@dataclass
class Level:
    """One path at one load, over one or more runs."""

    name: str
    load: float
    outcomes: Outcomes = field(default_factory=Outcomes)
    handled: list[float] = field(default_factory=list)  # the router's own time on each refusal
    probed: list[float] = field(default_factory=list)  # the light caller's refusals
    arrived: int = 0
    seconds: float = 0.0

    def merge(self, other: Level) -> None:
        self.outcomes.merge(other.outcomes)
        self.handled += other.handled
        self.probed += other.probed
        self.arrived += other.arrived
        self.seconds += other.seconds

    def result(self) -> PathResult:
        outcomes = self.outcomes
        other = sum(outcomes.other.values())
        total = max(1, len(outcomes.ok) + len(outcomes.shed) + outcomes.throttled + outcomes.timed_out + other)
        return PathResult(
            f"{self.name}, {self.load}x load",
            len(outcomes.ok),
            self.seconds,
            outcomes.ok,
            {
                "offered_per_s": self.arrived / self.seconds,
                "load": self.load,
                "shed_rate": len(outcomes.shed) / total,
                "throttled_rate": outcomes.throttled / total,
                "timeout_rate": outcomes.timed_out / total,
                "shed_p99_ms": _p99_ms(outcomes.shed),
                "shed_router_p99_ms": _p99_ms(self.handled),
                "shed_probe_p99_ms": _p99_ms(self.probed),
                "probe_refusals": len(self.probed),
                "other_errors": other,
                **{f"shed_{r.lower()}": n for r, n in sorted(outcomes.reasons.items())},
            },
        )


async def run(seconds: float, rounds: int) -> tuple[list[PathResult], float]:
    pool = [mixed_texts(TEXTS_PER_CALL, 18, 118, SEED + i) for i in range(2000)]
    levels: list[Level] = []
    with triton_server() as triton:
        measured = None
        for label, settings in (("on", {}), ("off", {"admission_enabled": "false"})):
            with router_process(triton.grpc_address, {"MODELROUTER_LOG_LEVEL": "info"}, **settings) as target:
                async with grpc.aio.insecure_channel(target) as channel:
                    stub = pb_grpc.ModelRouterServiceStub(channel)
                    await capacity(stub, pool, 2.0)  # warm-up
                    if measured is None:
                        measured = await capacity(stub, pool, seconds)
                        say(f"capacity: {measured:.1f} calls/s ({measured * TEXTS_PER_CALL:.0f} texts/s)")
                    for load in LOADS if label == "off" else [x for x in LOADS if x not in THROTTLED_LOADS]:
                        levels.append(Level(f"admission {label}", load))
                        await run_level(stub, target, pool, levels[-1], measured, seconds, 0)
                    if label == "on":
                        levels += await throttled_rounds(stub, target, pool, measured, seconds, rounds)
    order = {"admission on": 0, "admission on + caller throttle": 1, "admission off": 2}
    return [level.result() for level in sorted(levels, key=lambda x: (order[x.name], x.load))], measured


async def throttled_rounds(stub, target: str, pool, measured: float, seconds: float, rounds: int) -> list[Level]:
    """At each of THROTTLED_LOADS, callers without and with the adaptive throttle, alternating `rounds`
    times (the first to go swaps each round): one 15 s run strays by 10-20% of capacity on this machine."""
    levels = []
    for load in THROTTLED_LOADS:
        plain, throttled = Level("admission on", load), Level("admission on + caller throttle", load)
        levels += [plain, throttled]
        for round_ in range(rounds):
            for level in (plain, throttled) if round_ % 2 == 0 else (throttled, plain):
                if level is plain:
                    await run_level(stub, target, pool, level, measured, seconds, round_)
                    continue
                # A fresh throttle per run, so that each run shows the steady state of its own load.
                async with grpc.aio.insecure_channel(target, interceptors=[ThrottlingInterceptor()]) as channel:
                    throttled_stub = pb_grpc.ModelRouterServiceStub(channel)
                    await run_level(throttled_stub, target, pool, level, measured, seconds, round_)
    return levels


async def run_level(stub, target: str, pool, level: Level, measured: float, seconds: float, round_: int) -> None:
    """One run of `seconds` at `level.load` x capacity, open loop, with the light caller beside it; the
    same arrivals for every path in a round."""
    rate = level.load * measured
    say(f"  {level.name}, {level.load}x = {rate:.1f} calls/s for {seconds:.0f} s ...")
    logged = ROUTER_LOG.stat().st_size
    probe = _start_probe(target, seconds)
    this = Level(level.name, level.load, seconds=seconds)
    seed = SEED + int(level.load * 10) + 1000 * round_
    this.arrived = await open_loop(stub, pool, rate, seconds, seed, this.outcomes)
    this.handled = _refusals_handled_s(logged)
    this.probed = _probe_refusals(probe)
    level.merge(this)
    result = this.result()
    say(
        f"    goodput {result.throughput:.1f}/s, p50 {result.percentile_ms(50):.0f} ms, "
        f"p99 {result.percentile_ms(99):.0f} ms, shed {result.extra['shed_rate']:.0%}, "
        f"throttled by the caller {result.extra['throttled_rate']:.0%}, "
        f"timed out {result.extra['timeout_rate']:.0%}, other {this.outcomes.other}, "
        f"refused by reason {this.outcomes.reasons}"
    )
    await asyncio.sleep(DEADLINE_S + 1)  # let the queue drain between levels


def _reason(error: grpc.aio.AioRpcError) -> str:
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    for detail in status.details if status else ():
        if detail.Unpack(info):
            return info.reason
    return error.code().name


def _start_probe(target: str, seconds: float) -> subprocess.Popen:
    command = [sys.executable, "-m", "bench.probe", "--target", target, "--model", MODEL, "--seconds", str(seconds)]
    command += ["--interval", str(PROBE_INTERVAL_S), "--deadline", str(DEADLINE_S)]  # _refused reads DEADLINE_S
    return subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE)


def _probe_refusals(probe: subprocess.Popen) -> list[float]:
    """The probe's refused calls' latencies (seconds), as _refused counts them."""
    output, _ = probe.communicate(timeout=120)
    return [latency for latency, code in json.loads(output) if _refused(code, latency)]


def _refused(code: str, latency_s: float) -> bool:
    """Refused at once by the router: RESOURCE_EXHAUSTED, or DEADLINE_EXCEEDED well before the deadline
    (DEADLINE_TOO_SHORT: the router said it could not make it)."""
    return code == "RESOURCE_EXHAUSTED" or (code == "DEADLINE_EXCEEDED" and latency_s < DEADLINE_S * 0.9)


def _refusals_handled_s(offset: int) -> list[float]:
    """Seconds the router spent on each refusal it logged after `offset` in its log (its `ms` field)."""
    handled = []
    with ROUTER_LOG.open("rb") as log:
        log.seek(offset)
        for line in log:
            if not line.startswith(b"{"):
                continue
            fields = json.loads(line)
            if fields.get("event") == "rpc" and fields.get("reason") in ("QUEUE_FULL", "DEADLINE_TOO_SHORT"):
                handled.append(fields["ms"] / 1000)
    return handled


def _p99_ms(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


def plot(rows: list[dict]) -> None:
    """Latency and goodput against offered load, from the report's rows (bench/results/admission.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (latency, goodput) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, color in (("on", "tab:blue"), ("off", "tab:red")):
        mine = [r for r in rows if r["name"].startswith(f"admission {label},")]
        loads = [r["load"] for r in mine]
        latency.plot(loads, [r["p50_ms"] for r in mine], "o--", color=color, label=f"{label}: p50")
        latency.plot(loads, [r["p99_ms"] for r in mine], "o-", color=color, label=f"{label}: p99")
        goodput.plot(loads, [r["items_per_s"] for r in mine], "o-", color=color, label=f"admission {label}")
    throttled = [r for r in rows if r["name"].startswith("admission on + caller throttle,")]
    if throttled:
        loads = [r["load"] for r in throttled]
        latency.plot(loads, [r["p50_ms"] for r in throttled], "s--", color="tab:green", label="on + throttle: p50")
        goodput.plot(
            loads, [r["items_per_s"] for r in throttled], "s-", color="tab:green", label="on + caller throttle"
        )
    latency.axhline(DEADLINE_S * 1000, color="gray", lw=0.8, ls=":")
    latency.text(0.5, DEADLINE_S * 1000, " caller deadline", va="bottom", color="gray")
    latency.set(ylabel="latency of successful calls (ms)", title="Latency vs offered load")
    goodput.set(ylabel="successful calls/s", title="Goodput vs offered load")
    for ax in (latency, goodput):
        ax.set_xscale("log")
        ax.set_xticks(LOADS, [f"{x}x" for x in LOADS])
        ax.minorticks_off()
        ax.set_xlabel("offered load (x measured capacity)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "admission.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per load level (default 15)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs at 2x and 4x, with and without the caller throttle (default 3)"
    )
    args = parser.parse_args(argv)
    say(f"admission: {TEXTS_PER_CALL} texts per call, {DEADLINE_S:.0f} s deadline, loads {LOADS}")
    results, measured = asyncio.run(run(args.seconds, args.rounds))
    write_report(
        "admission",
        "Admission control under overload: on vs off (all-MiniLM-L6-v2, CPU)",
        [
            f"Capacity measured first (16 closed-loop callers): {measured:.1f} calls/s of {TEXTS_PER_CALL} texts.",
            f"Open-loop Poisson arrivals at 0.5x-4x of it for {args.seconds:.0f} s each; every call has a "
            f"{DEADLINE_S:.0f} s deadline. With admission on, 2x and 4x ran {args.rounds} times each, "
            "alternating with the caller-throttle runs (one round's runs get the same arrivals); their rows "
            "hold all the runs together.",
            "items = successful calls; items/s = goodput; p50/p99 = latency of successful calls;",
            "shed_rate = refused at once by the router (RESOURCE_EXHAUSTED or DEADLINE_TOO_SHORT); shed_p99_ms: "
            "a refusal's latency as the load generator saw it; shed_probe_p99_ms: as a light caller in its own "
            "process saw it (bench/probe.py, one short call every 0.25 s, not counted in goodput; probe_refusals: "
            "how many it got); shed_router_p99_ms: the router's own time on it (the `ms` of its log line), "
            "without the network, gRPC's queues and the processes' turns on the shared cores;",
            "timeout_rate = the caller's deadline passed while waiting. Ratios are goodput / `admission off, 1.0x`.",
            "`admission on + caller throttle`: the same load from callers whose channel carries "
            "router.grpc.client.throttle.ThrottlingInterceptor (k = 2, a fresh throttle per run); "
            "throttled_rate = refused by that throttle before being sent.",
        ],
        results,
        baseline="admission off, 1.0x load",
    )
    plot(json.loads((RESULTS / "admission.json").read_text())["paths"])


if __name__ == "__main__":
    main()
