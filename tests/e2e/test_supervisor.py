"""The supervisor keeps an embedded model server up: one that is still running but answers nothing (as a
tritonserver that aborted and stayed up did on CI) is killed and started again, as one that exits is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import tritonclient.grpc as triton_grpc

from adapters.triton.embedded import Supervisor
from tests.helpers import EMBED_MODEL, process_group, running_triton


async def test_a_server_that_stops_answering_is_killed_and_started_again(tmp_path):
    from bench.harness import linked_repository

    repository = linked_repository(tmp_path / "repository", {EMBED_MODEL: {}})
    with running_triton(repository.resolve(), tmp_path / "triton.log", [EMBED_MODEL]) as server:
        supervisor = Supervisor(server, live_check_s=0.5, live_timeout_s=1.0, unresponsive_s=3.0)
        task = asyncio.create_task(supervisor.run())
        try:
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
            client = triton_grpc.InferenceServerClient(server.grpc_address)
            assert client.is_server_live()  # the new one answers
            client.close()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
