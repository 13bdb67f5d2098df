"""The Triton backend: the only code that imports tritonclient.

One `TritonBackend` fronts one or more Triton servers (shards) that serve the same repository. Each
batch goes to the next ready shard in turn; a batch that fails with UNAVAILABLE is retried on another
shard (or the same one, after a backoff), because Triton never started it. Any other failure is final.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence

import numpy as np
import structlog
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from adapters.triton.tensors import input_tensors
from router.core import errors
from router.core.contract import ModelContract, ModelDescription, TensorSpec
from router.core.errors import ErrorKind, RouterError
from router.core.tokenize import Window

log = structlog.get_logger(__name__)

# Ample for 5,000-document rerank batches and their embeddings; Triton's own default is the same.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]
_RETRYABLE = {"StatusCode.UNAVAILABLE"}


def _status(error: InferenceServerException) -> str:
    return str(error.status() or "")


def _as_router_error(error: InferenceServerException, shard: str, model: str) -> RouterError:
    status = _status(error)
    log.warning("triton.error", shard=shard, model=model, status=status, detail=error.message())
    if status == "StatusCode.UNAVAILABLE":
        return RouterError(
            ErrorKind.BACKEND_UNAVAILABLE,
            errors.BACKEND_UNAVAILABLE,
            "the model server is unavailable",
            retry_after_s=1.0,
        )
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return RouterError(ErrorKind.DEADLINE_EXCEEDED, "BACKEND_DEADLINE", "the model server ran out of time")
    if status == "StatusCode.RESOURCE_EXHAUSTED":
        return RouterError(
            ErrorKind.OVERLOADED, "BACKEND_OVERLOADED", "the model server is overloaded", retry_after_s=0.5
        )
    return RouterError(ErrorKind.BACKEND_FAILED, errors.BACKEND_FAILED, "the model server failed the request")


class TritonShard:
    def __init__(self, address: str) -> None:
        self.address = address
        self.client = triton_grpc.InferenceServerClient(address, channel_args=_CHANNEL_ARGS)


class TritonBackend:
    def __init__(self, addresses: Sequence[str], retries: int = 2, backoff_s: float = 0.1) -> None:
        if not addresses:
            raise ValueError("at least one Triton address is needed")
        self.shards = [TritonShard(address) for address in addresses]
        self._turn = itertools.cycle(range(len(self.shards)))
        self.retries = retries
        self.backoff_s = backoff_s

    async def is_ready(self) -> bool:
        for shard in self.shards:
            try:
                if await shard.client.is_server_ready(client_timeout=2.0):
                    return True
            except InferenceServerException:
                continue
        return False

    async def describe_models(self) -> list[ModelDescription]:
        """Ready models across all shards; a model on several shards is listed once, with all of them.

        A shard that does not answer is left out; if none answers, BACKEND_UNAVAILABLE is raised, so the
        caller keeps what it knew instead of concluding that no model is served."""
        found: dict[tuple[str, str], dict] = {}
        served_by: dict[tuple[str, str], list[str]] = {}
        answered = 0
        for shard in self.shards:
            try:
                index = await shard.client.get_model_repository_index(as_json=True, client_timeout=5.0)
                for entry in index.get("models", []):
                    if entry.get("state") != "READY":
                        continue
                    key = (entry["name"], entry.get("version", ""))
                    if key not in found:
                        config = await shard.client.get_model_config(entry["name"], as_json=True, client_timeout=5.0)
                        found[key] = config["config"]
                    served_by.setdefault(key, []).append(shard.address)
            except InferenceServerException as error:
                log.warning("triton.index_failed", shard=shard.address, detail=error.message())
                continue
            answered += 1
        if not answered:
            raise RouterError(
                ErrorKind.BACKEND_UNAVAILABLE,
                errors.BACKEND_UNAVAILABLE,
                "no model server answered for its model index",
                retry_after_s=1.0,
            )
        return [_describe(config, version, served_by[(name, version)]) for (name, version), config in found.items()]

    async def infer(self, contract: ModelContract, rows: Sequence[Window], timeout_s: float | None) -> np.ndarray:
        model, output = contract.name, contract.output_name
        tensors = []
        for name, array in input_tensors(contract, rows).items():
            tensor = triton_grpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        wanted = [triton_grpc.InferRequestedOutput(output)]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        attempt = 0
        while True:
            shard = self.shards[next(self._turn)]
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            try:
                result = await shard.client.infer(
                    model,
                    tensors,
                    model_version=contract.version,
                    outputs=wanted,
                    # Triton drops the request from its queue once the caller's deadline has passed
                    # (the model's queue policy allows the override); the client stops waiting too.
                    timeout=None if left is None else max(1, int(left * 1_000_000)),
                    client_timeout=left,
                )
                return result.as_numpy(output)
            except InferenceServerException as error:
                backoff = self.backoff_s * 2**attempt
                in_time = deadline is None or time.monotonic() + backoff < deadline
                if _status(error) in _RETRYABLE and attempt < self.retries and in_time:
                    attempt += 1
                    log.info("triton.retry", shard=shard.address, model=model, attempt=attempt)
                    await asyncio.sleep(backoff)
                    continue
                raise _as_router_error(error, shard.address, model) from error

    async def close(self) -> None:
        for shard in self.shards:
            await shard.client.close()


def _describe(config: dict, version: str, served_by: list[str]) -> ModelDescription:
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
        served_by=tuple(served_by),
    )
