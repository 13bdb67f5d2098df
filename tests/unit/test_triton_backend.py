"""The Triton adapter's retries, with the client's infer replaced (no network)."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from adapters.triton.backend import TritonBackend
from router.core.errors import ErrorKind, RouterError

INPUTS = {"input_ids": np.ones((1, 4), dtype=np.int64)}


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
        await backend.infer("m", INPUTS, "out", timeout_s=10.0)
    assert caught.value.kind is ErrorKind.BACKEND_UNAVAILABLE
    assert len(timeouts) == 3  # the first try and two retries
    assert timeouts[0] <= 10.0 and timeouts[2] < timeouts[1] < timeouts[0]  # each gets only what is left
    await backend.close()


async def test_no_retry_that_would_outlive_the_deadline():
    backend, timeouts = unavailable_backend(backoff_s=1.0)
    with pytest.raises(RouterError):
        await backend.infer("m", INPUTS, "out", timeout_s=0.5)
    assert len(timeouts) == 1
    await backend.close()
