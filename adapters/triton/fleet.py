"""Discovery: which Triton servers there are, which answer, and which model versions each has ready.

Targets come from the settings: `host:port` is one server (its name is resolved by gRPC as usual);
`dns:///host:port` is every address the name resolves to, re-resolved every `dns_interval_s`: a
Kubernetes headless Service presents its Triton pods that way. Every `interval_s` (and at once after a
batch failed on a shard) each server is asked whether it is ready and for its repository index; a model's
config is read when a version of it appears. What is found lands in the core's `ShardSet`, which the
backend picks shards from; listeners hear of every change, so a model loaded on a shard is routed within
about one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import Callable, Sequence

import grpc
import structlog
import tritonclient.grpc.aio as triton_grpc
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from adapters.triton.targets import CHANNEL_ARGS, Target, TritonTls, join
from router.core import errors
from router.core.errors import RouterError
from router.core.models.contract import ModelDescription, TensorSpec
from router.observability import metrics
from router.shards.picking import Shard, ShardSet

log = structlog.get_logger(__name__)


class TritonFleet:
    def __init__(
        self,
        targets: Sequence[str],
        shards: ShardSet,
        interval_s: float = 1.0,
        dns_interval_s: float = 5.0,
        timeout_s: float = 2.0,
        tls: TritonTls | None = None,
    ) -> None:
        if not targets:
            raise ValueError("at least one Triton target is needed")
        self.targets = [Target.parse(t) for t in targets]
        self.shards = shards
        self.interval_s = interval_s
        self.dns_interval_s = dns_interval_s
        self.timeout_s = timeout_s
        self.tls = tls
        self.clients: dict[str, triton_grpc.InferenceServerClient] = {}
        """tritonclient's client per shard: discovery, and generation streams."""
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.stubs: dict[str, service_pb2_grpc.GRPCInferenceServiceStub] = {}
        """Triton's generated gRPC stub per shard, on a channel of its own: encoder batches (tensors.py)."""
        self.configs: dict[tuple[str, str], dict] = {}
        self.reachable: set[str] = set()
        """Shards that answered the last poll."""
        self._resolved: dict[Target, list[str]] = {}
        self._resolved_at = float("-inf")
        self._retiring: list[tuple[Shard, triton_grpc.InferenceServerClient, grpc.aio.Channel]] = []
        self._listeners: list[Callable[[], None]] = []
        self._poke = asyncio.Event()
        self._view: object = None
        self._task: asyncio.Task | None = None

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def client(self, shard: Shard) -> triton_grpc.InferenceServerClient:
        return self.clients[shard.address]

    def stub(self, shard: Shard) -> service_pb2_grpc.GRPCInferenceServiceStub:
        return self.stubs[shard.address]

    def _options(self) -> list[tuple[str, object]]:
        options = list(CHANNEL_ARGS)
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        return options

    def _new_client(self, address: str) -> triton_grpc.InferenceServerClient:
        if self.tls is None:
            return triton_grpc.InferenceServerClient(address, channel_args=self._options())
        return triton_grpc.InferenceServerClient(address, channel_args=self._options(), **self.tls.client_options())

    def _new_channel(self, address: str) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(address, options=self._options())
        return grpc.aio.secure_channel(address, self.tls.channel_credentials(), options=self._options())

    def _add(self, address: str) -> None:
        self.clients[address] = self._new_client(address)
        self.channels[address] = self._new_channel(address)
        self.stubs[address] = service_pb2_grpc.GRPCInferenceServiceStub(self.channels[address])

    async def start(self) -> None:
        """Resolve and poll once (so the first view is known), then keep polling in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="triton-discovery")

    def poke(self) -> None:
        """Poll now rather than at the next interval (a batch failed on a shard)."""
        self._poke.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.interval_s)
            self._poke.clear()
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - discovery must outlive any one poll
                log.exception("triton.discovery_failed")

    async def refresh(self) -> None:
        if time.monotonic() - self._resolved_at >= self.dns_interval_s:
            await self._resolve()
        shards = list(self.shards.shards.values())
        await asyncio.gather(*(self._poll(shard) for shard in shards))
        await self._close_retired()
        view = tuple((s.address, s.address in self.reachable, s.ready, tuple(sorted(s.models.items()))) for s in shards)
        if view != self._view:
            self._view = view
            for listener in self._listeners:
                listener()

    async def _resolve(self) -> None:
        self._resolved_at = time.monotonic()
        loop = asyncio.get_running_loop()
        addresses: list[str] = []
        for target in self.targets:
            if not target.resolve:
                addresses.append(target.address)
                continue
            try:
                infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
                found = sorted({join(info[4][0], target.port) for info in infos})
            except OSError as error:
                found = self._resolved.get(target, [])
                log.warning("triton.dns_failed", target=target.host, error=str(error), kept=len(found))
            if found != self._resolved.get(target):
                log.info("triton.dns", target=target.host, addresses=found)
            self._resolved[target] = found
            addresses.extend(found)
        added, removed = self.shards.update(addresses)
        for shard in added:
            self._add(shard.address)
            log.info("triton.shard_added", shard=shard.address)
        for shard in removed:
            log.info("triton.shard_removed", shard=shard.address, inflight=shard.inflight)
            self.reachable.discard(shard.address)
            self.stubs.pop(shard.address)
            self._retiring.append((shard, self.clients.pop(shard.address), self.channels.pop(shard.address)))
            for metric in (metrics.SHARD_READY, metrics.SHARD_OUTSTANDING_TOKENS):
                with contextlib.suppress(KeyError):  # never reported
                    metric.remove(shard.address)

    async def _close_retired(self) -> None:
        """Close the clients of removed shards once their batches in flight have finished."""
        keep = []
        for shard, client, channel in self._retiring:
            if shard.inflight:
                keep.append((shard, client, channel))
            else:
                await client.close()
                await channel.close()
        self._retiring = keep

    async def _poll(self, shard: Shard) -> None:
        client = self.clients.get(shard.address)
        if client is None:
            return
        try:
            ready = await client.is_server_ready(client_timeout=self.timeout_s)
            index = await client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
            models: dict[str, set[str]] = {}
            for entry in index.get("models", []):
                if entry.get("state") == "READY":
                    models.setdefault(entry["name"], set()).add(entry.get("version", ""))
            for name, versions in models.items():
                for version in versions - shard.models.get(name, frozenset()):
                    # A version new on this shard (loaded, or reloaded with a new config): read its config.
                    config = await client.get_model_config(name, version, as_json=True, client_timeout=self.timeout_s)
                    self.configs[(name, version)] = config["config"]
        except InferenceServerException as error:
            if shard.address in self.reachable or shard.ready:
                log.warning("triton.shard_unreachable", shard=shard.address, detail=error.message())
            self.reachable.discard(shard.address)
            shard.ready = False
            metrics.SHARD_READY.labels(shard.address).set(0)
            return
        if shard.address not in self.reachable or shard.ready != ready:
            log.info("triton.shard_seen", shard=shard.address, ready=ready, models=sorted(models))
        self.reachable.add(shard.address)
        shard.ready = ready
        metrics.SHARD_READY.labels(shard.address).set(1 if ready else 0)
        shard.models = {name: frozenset(versions) for name, versions in models.items()}

    def describe(self) -> list[ModelDescription]:
        """Each model any answering shard has ready, at its newest version, with the shards that hold it.

        Raises BACKEND_UNAVAILABLE when no shard answered, so the caller keeps what it knew rather than
        conclude that no model is served."""
        answering = [s for s in self.shards.shards.values() if s.address in self.reachable]
        if not answering:
            raise RouterError(
                errors.BACKEND_UNAVAILABLE,
                "no model server answered for its model index",
                retry_after_s=1.0,
            )
        versions: dict[str, set[str]] = {}
        for shard in answering:
            for name, held in shard.models.items():
                versions.setdefault(name, set()).update(held)
        described = []
        for name, held in sorted(versions.items()):
            newest_first = tuple(sorted(held, key=_version_order, reverse=True))
            each = []
            for version in newest_first:
                config = self.configs.get((name, version))
                if config is not None:
                    served_by = tuple(s.address for s in answering if s.holds(name, version))
                    each.append(describe(config, version, served_by, newest_first))
            if each and each[0].version == newest_first[0]:
                described.append(dataclasses.replace(each[0], older=tuple(each[1:])))
        return described

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for client in [*self.clients.values(), *(client for _, client, _ in self._retiring)]:
            await client.close()
        for channel in [*self.channels.values(), *(channel for _, _, channel in self._retiring)]:
            await channel.close()


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (-1, version)


def describe(
    config: dict, version: str, served_by: tuple[str, ...], versions: tuple[str, ...] = ()
) -> ModelDescription:
    def specs(entries: list[dict]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(e["name"], e.get("data_type", ""), tuple(int(d) for d in e.get("dims", []))) for e in entries
        )

    parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
    return ModelDescription(
        name=config["name"],
        version=version,
        max_batch_size=int(config.get("max_batch_size", 0)),
        inputs=specs(config.get("input", [])),
        outputs=specs(config.get("output", [])),
        parameters=parameters,
        served_by=served_by,
        versions=versions or (version,),
        optional_inputs=frozenset(e["name"] for e in config.get("input", []) if e.get("optional")),
        decoupled=bool(config.get("model_transaction_policy", {}).get("decoupled", False)),
        priority_levels=int(config.get("dynamic_batching", {}).get("priority_levels", 0) or 0),
    )
