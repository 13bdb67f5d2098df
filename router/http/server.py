"""The HTTP listener (`http_port`): a Starlette app served by uvicorn on the router's own event loop,
beside the gRPC server, over the same Router (its services, limits, principals and metrics).

uvicorn runs as a task of the loop the router runs (no thread, no second loop): `start` binds the socket
(SO_REUSEPORT with `workers`, so every worker process serves the one port, as gRPC's does) and returns
the bound port; `stop` stops taking connections and gives the calls inside `grace_s` to end. Signals stay
the router's (router/cli.py drains first, then stops both listeners).

TLS: the listener's certificate and key are the gRPC listener's (`tls_cert_file`, `tls_key_file`); with
`tls_client_ca_file`, callers must present a client certificate that CA signed. Principals are found by
their API key (`Authorization: Bearer`): the ASGI server does not hand the client certificate's names to
the app, so a principal declared only by `certificate_name` cannot call over HTTP (docs/http.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl

import structlog
import uvicorn
from starlette.applications import Starlette

from router.app import Router
from router.http import problems
from router.http.edge import Edge
from router.http.routes import Routes
from router.observability import telemetry
from router.settings import Settings

log = structlog.get_logger(__name__)


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        """The router's signal handlers stay: it drains before the listeners stop (router/cli.py)."""
        yield


def build_app(router: Router, settings: Settings) -> Starlette:
    edge = Edge(
        router.auth,
        router.knows_model,
        settings.max_concurrent_rpcs,
        settings.http_max_body_bytes,
        settings.http_request_timeout_s,
        traced=telemetry.tracing_configured(),
    )
    return Starlette(
        routes=Routes(router, edge).all(),
        exception_handlers={404: problems.no_route, 405: problems.no_route},
    )


class HttpServer:
    def __init__(self, router: Router, settings: Settings, reuse_port: bool = False) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.port: int | None = None
        self.app = build_app(router, settings)
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task | None = None

    def _socket(self) -> socket.socket:
        s = self.settings
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((s.host, s.http_port or 0))
        sock.set_inheritable(True)
        return sock

    def _config(self) -> uvicorn.Config:
        s = self.settings
        tls = {}
        if s.tls_cert_file is not None and s.tls_key_file is not None:
            tls = {"ssl_certfile": str(s.tls_cert_file), "ssl_keyfile": str(s.tls_key_file)}
            if s.tls_client_ca_file is not None:
                tls |= {"ssl_ca_certs": str(s.tls_client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        return uvicorn.Config(
            self.app,
            http="httptools",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,  # the router writes each call's one `http` line itself
            server_header=False,  # the graceful-shutdown timeout is set by `stop`
            **tls,
        )

    async def start(self) -> int:
        """Bind and serve; return the bound port."""
        sock = self._socket()
        self.port = sock.getsockname()[1]
        self._server = _Uvicorn(self._config())
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise RuntimeError("the HTTP server stopped before it started")
            await asyncio.sleep(0.01)
        log.info(
            "router.http_listening",
            address=f"{self.settings.host}:{self.port}",
            tls="on" if self.settings.tls_cert_file else "off",
        )
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking connections; calls inside get `grace_s` to end, then are cancelled."""
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(1, round(grace_s))
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
