"""Run a router in a background thread of this process: for tests, benchmarks and notebooks."""

from __future__ import annotations

import asyncio
import threading

from router import event_loop
from router.app import Router
from router.grpc.server import RouterServer
from router.observability import logs
from router.settings import Settings


class LocalRouter:
    """`with LocalRouter(settings) as target:` serves on 127.0.0.1 and yields "host:port" once ready."""

    def __init__(self, settings: Settings, ready_timeout_s: float = 120.0) -> None:
        self.settings = settings
        self.ready_timeout_s = ready_timeout_s
        self.router: Router | None = None
        self.port: int | None = None
        self.http_port: int | None = None
        """The HTTP API's port, with `http_port` set (0: a free one)."""
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="local-router", daemon=True)

    @property
    def target(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def start(self) -> str:
        logs.configure(self.settings.log_level, self.settings.log_format)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        return self.target

    def stop(self) -> None:
        """Shut down as `router serve` does on SIGTERM: drain, then stop the server and the router."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)

    def _run(self) -> None:
        event_loop.run(self._main(), self.settings.event_loop)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.router = Router(self.settings)
        server = RouterServer(self.router, self.settings)
        http = None
        if self.settings.http_port is not None:
            from router.http.server import HttpServer

            http = HttpServer(self.router, self.settings)
        try:
            await self.router.start()
            self.port = await server.start()
            if http is not None:
                self.http_port = await http.start()
            await self.router.wait_ready(self.ready_timeout_s)
        except BaseException as error:  # hand any start failure to the caller's thread
            self._error = error
            self._started.set()
            await self._stop_listeners(server, http, 0)
            await self.router.stop()
            return
        self._started.set()
        await self._stop.wait()
        await self.router.shut_down()
        await self._stop_listeners(server, http, 0)
        await self.router.stop()

    @staticmethod
    async def _stop_listeners(server: RouterServer, http, grace_s: float) -> None:
        await server.stop(grace_s)
        if http is not None:
            await http.stop(grace_s)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
