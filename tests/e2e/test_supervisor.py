"""The supervisor keeps an embedded model server up: one that is still running but answers nothing (as a
tritonserver that aborted and stayed up did on CI) is killed and started again, as one that exits is."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from adapters.triton.embedded import EmbeddedTriton, Supervisor
from tests.helpers import EMBED_MODEL, process_group


async def test_a_server_that_stops_answering_is_killed_and_started_again(tmp_path):
    from bench.harness import linked_repository

    repository = linked_repository(tmp_path / "repository", {EMBED_MODEL: {}})
    server = EmbeddedTriton(repository.resolve(), log_path=tmp_path / "triton.log")
    server.start()
    supervisor = Supervisor(server, live_check_s=0.5, live_timeout_s=1.0, unresponsive_s=3.0)
    task = None
    try:
        await asyncio.to_thread(server.wait_ready)
        task = asyncio.create_task(supervisor.run())
        await asyncio.sleep(2)
        assert supervisor.restarts == 0  # a server that answers is left alone
        wedged = server.pid
        os.kill(wedged, signal.SIGSTOP)  # alive, its ports open, answering nothing
        deadline = time.monotonic() + 120
        while supervisor.restarts == 0:
            assert time.monotonic() < deadline, "the unresponsive server was not restarted"
            assert not task.done(), task
            await asyncio.sleep(0.2)
        assert server.pid != wedged and server.exited() is None
        assert process_group(wedged) == []  # the stuck server and its stubs are gone
        assert await asyncio.to_thread(supervisor._live)  # the new one answers
    finally:
        if task is not None:
            task.cancel()
        server.stop()
