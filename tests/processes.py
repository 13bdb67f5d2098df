"""`router serve` as a process of its own (as a deployment runs it), its JSON log lines kept as they come."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from adapters.triton.embedded import free_port
from router.settings import PROJECT_ROOT
from tests.helpers import REPOSITORY, wait_for


class Served:
    """`router serve --triton ADDRESS... ARGS` on a free loopback port; `environment`: MODELROUTER_*
    settings on top of the JSON log format and the built repository."""

    def __init__(self, triton_addresses: list[str], *args: str, environment: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            MODELROUTER_LOG_FORMAT="json",
            MODELROUTER_MODEL_REPOSITORY=str(REPOSITORY),
            **(environment or {}),
        )
        command = [sys.executable, "-m", "router", "serve", "--port", str(self.port)]
        for address in triton_addresses:
            command += ["--triton", address]
        self.process = subprocess.Popen(
            [*command, *args], cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_ready(self, timeout_s: float = 120.0) -> Served:
        wait_for(
            lambda: any("is ready on" in line for line in self.lines) or self.process.poll() is not None,
            "the router to answer SERVING",
            timeout_s,
        )
        assert self.process.poll() is None, "router serve exited:\n" + "".join(self.lines[-30:])
        return self

    def logs(self, event: str) -> list[dict]:
        found = []
        for line in list(self.lines):
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found

    def workers(self) -> list[int]:
        """The process's live children: its worker processes (read from /proc)."""
        pid = self.process.pid
        try:
            children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []
        return [child for child in children if alive(child)]

    def kill(self) -> None:
        """Kill it and its workers, if still running."""
        if self.process.poll() is None:
            for worker in self.workers():
                os.kill(worker, signal.SIGKILL)
            self.process.kill()
        self.process.wait(30)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
