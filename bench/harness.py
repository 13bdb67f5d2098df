"""What every benchmark shares: a real Triton, a router in its own process, timing and reporting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.triton.embedded import EmbeddedTriton, free_port
from router.settings import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "bench" / "results"
REPOSITORY = PROJECT_ROOT / "triton_models" / "repository"
SCRATCH = PROJECT_ROOT / "bench" / "out"
ROUTER_LOG = SCRATCH / "router.log"  # every router_serve appends its output here


def linked_repository(root: Path, models: dict[str, dict[str, str]]) -> Path:
    """A model repository under `root` (made anew) holding these models of the built one, with their
    config parameters set to the given values (replaced where the config has them, added otherwise);
    weights and tokenizers are linked, not copied."""
    if root.exists():
        shutil.rmtree(root)  # removes the links, not what they point to
    for model, parameters in models.items():
        folder = root / model
        folder.mkdir(parents=True)
        (folder / "1").symlink_to(REPOSITORY / model / "1")
        for name in ("tokenizer.json", "chat_template.jinja"):
            if (REPOSITORY / model / name).exists():
                (folder / name).symlink_to(REPOSITORY / model / name)
        config = (REPOSITORY / model / "config.pbtxt").read_text()
        for key, value in parameters.items():
            line = f'parameters {{ key: "{key}", value: {{ string_value: "{value}" }} }}'
            config, found = re.subn(rf'^parameters \{{ key: "{re.escape(key)}".*$', line, config, flags=re.M)
            if not found:
                config += line + "\n"
        (folder / "config.pbtxt").write_text(config)
    return root


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


@dataclass
class PathResult:
    """One path through the system, measured on the same work as the others in its run."""

    name: str
    items: int
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.items / self.wall_s

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")

    def summary(self) -> dict:
        return {
            "name": self.name,
            "items": self.items,
            "wall_s": round(self.wall_s, 3),
            "items_per_s": round(self.throughput, 2),
            "p50_ms": round(self.percentile_ms(50), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
            **{k: round(v, 4) for k, v in self.extra.items()},
        }


async def bounded(jobs: Sequence[Callable[[], Awaitable[object]]], concurrency: int) -> list[float]:
    """Run the jobs `concurrency` at a time; return each job's latency in seconds."""
    latencies: list[float] = [0.0] * len(jobs)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(jobs)):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            started = time.perf_counter()
            await jobs[index]()
            latencies[index] = time.perf_counter() - started

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def measure(name: str, items: int, jobs, concurrency: int, **extra: float) -> PathResult:
    say(f"  {name}: {len(jobs)} calls, {concurrency} at a time ...")
    started = time.perf_counter()
    latencies = await bounded(jobs, concurrency)
    result = PathResult(name, items, time.perf_counter() - started, latencies, dict(extra))
    say(
        f"  {name}: {result.throughput:.1f}/s, "
        f"p50 {result.percentile_ms(50):.1f} ms, p99 {result.percentile_ms(99):.1f} ms"
    )
    return result


@contextlib.contextmanager
def triton_server(
    repository: Path = REPOSITORY, log_name: str = "triton.log", cpus: frozenset[int] | None = None
) -> Iterator[EmbeddedTriton]:
    import tritonclient.grpc as triton_grpc

    server = EmbeddedTriton(repository.resolve(), log_path=SCRATCH / log_name, cpus=cpus)
    say("starting Triton on 127.0.0.1 ...")
    with server:
        client = triton_grpc.InferenceServerClient(server.grpc_address)
        while not client.is_server_ready():
            time.sleep(0.2)
        client.close()
        yield server


@contextlib.contextmanager
def router_process(
    triton_address: str | Sequence[str], environment: dict[str, str] | None = None, **settings: str
) -> Iterator[str]:
    """`router serve` in its own process (as deployed), in front of the given Triton(s); `environment`
    adds variables (OTEL_*) to its environment."""
    addresses = [triton_address] if isinstance(triton_address, str) else list(triton_address)
    arguments = [arg for address in addresses for arg in ("--triton", address)]
    with router_serve(arguments, environment, **settings) as (target, _):
        yield target


@contextlib.contextmanager
def router_serve(
    arguments: Sequence[str], environment: dict[str, str] | None = None, **settings: str
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`router serve ARGUMENTS` in its own process on a free port; yields its target and its process."""
    port = free_port()
    env = dict(os.environ, **(environment or {}), **{f"MODELROUTER_{k.upper()}": str(v) for k, v in settings.items()})
    env.setdefault("MODELROUTER_LOG_LEVEL", "warning")
    command = [sys.executable, "-m", "router", "serve", "--port", str(port), *arguments]
    SCRATCH.mkdir(parents=True, exist_ok=True)
    with open(ROUTER_LOG, "ab") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    try:
        _wait_serving(target, process)
        yield target, process
    finally:
        process.terminate()
        process.wait(timeout=60)


def cpu_seconds(pid: int, descendants: bool = False) -> float:
    """User + system CPU time a process has used so far (from /proc); with `descendants`, plus that of
    the processes it started that are still running (a traced router's span exporter)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    if descendants:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        used += sum(cpu_seconds(int(child), descendants=True) for child in children)
    return used


def _wait_serving(target: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the router exited with {process.returncode}; see {ROUTER_LOG}")
            with contextlib.suppress(grpc.RpcError):
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == 1:
                    return
            time.sleep(0.3)
    raise TimeoutError(f"the router at {target} never became SERVING")


def machine() -> str:
    return f"{os.cpu_count()} CPUs, {os.uname().sysname} {os.uname().machine}"


def write_report(name: str, title: str, notes: list[str], results: list[PathResult], baseline: str) -> Path:
    """Markdown and JSON into bench/results/; ratios are against `baseline`, measured in the same run."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = next(r for r in results if r.name == baseline)
    rows = [r.summary() | {"ratio": round(r.throughput / base.throughput, 3)} for r in results]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [f"# {title}", "", f"Run {stamp} on {machine()}; ratios are throughput / `{baseline}`.", ""]
    lines += [f"- {note}" for note in notes] + [""]
    extras = sorted(
        {k for row in rows for k in row} - {"name", "items", "wall_s", "items_per_s", "p50_ms", "p99_ms", "ratio"}
    )
    header = ["path", "items", "wall s", "items/s", "p50 ms", "p99 ms", "ratio", *extras]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row["name"],
            row["items"],
            row["wall_s"],
            row["items_per_s"],
            row["p50_ms"],
            row["p99_ms"],
            row["ratio"],
        ]
        cells += [row.get(k, "") for k in extras]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps({"run": stamp, "baseline": baseline, "paths": rows}, indent=2))
    say(f"wrote {path.relative_to(PROJECT_ROOT)}")
    print("\n".join(lines), flush=True)
    return path


def bar_plot(name: str, title: str, results: list[PathResult], unit: str, value: str | None = None) -> Path:
    """A horizontal bar per path: its throughput, or `extra[value]` when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 * len(results) + 1.5))
    names = [r.name for r in results][::-1]
    values = [r.extra[value] if value else r.throughput for r in results][::-1]
    colors = ["tab:blue" if n.startswith("router") else "tab:gray" for n in names]
    ax.barh(names, values, color=colors)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.1f}", va="center")
    ax.set_xlabel(unit)
    ax.set_title(title)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class _OtlpSink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and drops them."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint on loopback that takes a traced router's spans and drops them; yields its URL."""
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{sink.server_address[1]}"
    finally:
        sink.shutdown()


class RedisServer:
    """A real `redis-server` (Debian's package; `make test` installs it) on a free loopback port, with no
    persistence. `kill` and `start` again on the same port stand for an outage."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        command = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer; see {self.log_path}")
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        import redis

        try:
            return self.client().ping()
        except redis.RedisError:
            return False

    def client(self):
        """A (synchronous) client of it, from the `redis` library."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
