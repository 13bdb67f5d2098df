"""The Triton adapter's retries, with the client's infer replaced (no network)."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from adapters.triton.backend import TritonBackend
from router.core.errors import ErrorKind, RouterError
from router.core.tokenize import Window
from tests.unit.test_scheduler import contract

ROWS = [Window(np.ones(4, dtype=np.int64), None, 0, 4)]


def unavailable_backend(backoff_s: float) -> tuple[TritonBackend, list]:
    backend = TritonBackend(["127.0.0.1:1"], retries=2, backoff_s=backoff_s)
    timeouts: list = []

    async def infer(model, tensors, **options):  # tritonclient's keywords: outputs, timeout, client_timeout
        timeouts.append(options["client_timeout"])
        raise InferenceServerException("down", status="StatusCode.UNAVAILABLE")

    backend.shards[0].client.infer = infer
    return backend, timeouts


async def test_unavailable_is_retried_within_the_deadline_left():
    backend, timeouts = unavailable_backend(backoff_s=0.01)
    with pytest.raises(RouterError) as caught:
        await backend.infer(contract(), ROWS, timeout_s=10.0)
    assert caught.value.kind is ErrorKind.BACKEND_UNAVAILABLE
    assert len(timeouts) == 3  # the first try and two retries
    assert timeouts[0] <= 10.0 and timeouts[2] < timeouts[1] < timeouts[0]  # each gets only what is left
    await backend.close()


async def test_no_retry_that_would_outlive_the_deadline():
    backend, timeouts = unavailable_backend(backoff_s=1.0)
    with pytest.raises(RouterError):
        await backend.infer(contract(), ROWS, timeout_s=0.5)
    assert len(timeouts) == 1
    await backend.close()


async def test_an_index_no_shard_answers_is_an_error_not_an_empty_list():
    backend = TritonBackend(["127.0.0.1:1", "127.0.0.1:2"])

    async def index(**options):
        raise InferenceServerException("connection refused", status="StatusCode.UNAVAILABLE")

    for shard in backend.shards:
        shard.client.get_model_repository_index = index
    with pytest.raises(RouterError) as caught:
        await backend.describe_models()
    assert caught.value.kind is ErrorKind.BACKEND_UNAVAILABLE and caught.value.retry_after_s
