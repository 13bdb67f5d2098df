"""The grpc.aio server: the router's service, standard health, reflection, the interceptor chain."""

from __future__ import annotations

import asyncio
import time

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from router.app import Router
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.grpc.gen.modelrouter.v1 import model_router_service_pb2_grpc as pb_grpc
from router.grpc.interceptors import interceptor_chain
from router.grpc.servicers import ModelRouterServicer
from router.settings import Settings

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ModelRouterService"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_health_name(model: str) -> str:
    """The health service name of one model: `modelrouter.v1.ModelRouterService/<model>`."""
    return f"{SERVICE_NAME}/{model}"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for the listener when a certificate is set; mutual TLS (client certificates required and
    checked against the CA) when a client CA is set too."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    ca = settings.tls_client_ca_file
    return grpc.ssl_server_credentials(
        [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
        root_certificates=None if ca is None else ca.read_bytes(),
        require_client_auth=ca is not None,
    )


class RouterServer:
    """Serves a Router over gRPC. Health is NOT_SERVING until Triton and the models are ready."""

    def __init__(self, router: Router, settings: Settings) -> None:
        self.router = router
        self.settings = settings
        self.port: int | None = None
        options = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
        ]
        self._interceptors = interceptor_chain(router.knows_model, router.auth, settings.max_concurrent_rpcs)
        self.server = grpc.aio.server(interceptors=self._interceptors, options=options)
        pb_grpc.add_ModelRouterServiceServicer_to_server(ModelRouterServicer(router), self.server)
        self.health = health.aio.HealthServicer()
        self._reported: set[str] = set()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        router.on_readiness(self._set_health)

    async def _set_health(self, ready: bool, models: dict[str, bool] | None = None) -> None:
        """The server as a whole ("" and the service's name), and each model as `<service>/<model>`; a
        model no longer deployed turns NOT_SERVING."""
        models = dict(models or {})
        gone = {name: False for name in self._reported - set(models)}
        self._reported |= set(models)
        for service, up in (
            ("", ready),
            (SERVICE_NAME, ready),
            *((model_health_name(m), ok) for m, ok in {**models, **gone}.items()),
        ):
            await self.health.set(service, _SERVING if up and ready else _NOT_SERVING)

    async def start(self) -> int:
        """Bind and start; return the bound port."""
        await self._set_health(False)
        address = f"{self.settings.host}:{self.settings.port}"
        credentials = server_credentials(self.settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        await self.server.start()
        log.info(
            "router.listening",
            address=f"{self.settings.host}:{self.port}",
            tls="mutual" if self.settings.tls_client_ca_file else "on" if credentials else "off",
            authentication="on" if self.router.auth.enabled else "off",
        )
        return self.port

    async def stop(
        self, grace_s: float = 5.0, quiet_s: float = 0.0, quiet_limit_s: float = 0.0, not_before: float = 0.0
    ) -> None:
        """Stop taking calls and give those inside `grace_s` to end. With `quiet_s`, first wait (at most
        `quiet_limit_s`) until `not_before` (time.monotonic()) has passed and no call has come in for
        `quiet_s`: a call that reaches grpc after the server stops taking calls is cancelled (CANCELLED
        at its caller, which cannot tell whether any work was done), so a server that stops in a lull,
        after the callers it refused with a short delay have been back, loses no call of callers that
        heed their retry delay."""
        give_up = time.monotonic() + quiet_limit_s
        while quiet_s and (now := time.monotonic()) < give_up:
            lull = now - max((i.last_arrival for i in self._interceptors), default=0.0)
            if lull >= quiet_s and now >= not_before:
                break
            await asyncio.sleep(max(0.01, min(max(quiet_s - lull, not_before - now), give_up - now)))
        await self.server.stop(grace_s)
