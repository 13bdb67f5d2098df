"""Settings are checked at start-up: a bad value stops the router, naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from router.core.config import BatchingConfig
from router.settings import PROJECT_ROOT, Settings


@pytest.mark.parametrize(
    "name, value",
    [
        ("max_inflight_batches", 0),
        ("max_batch_tokens", -1),
        ("queue_max_requests", 0),
        ("min_batch_fill", 1.5),
        ("backend_timeout_s", 0),
        ("port", 70000),
    ],
)
def test_a_bad_value_is_refused_naming_the_setting(name, value):
    with pytest.raises(ValidationError) as caught:
        Settings(**{name: value})
    assert caught.value.errors()[0]["loc"] == (name,)


def test_the_core_configs_check_themselves_too():
    with pytest.raises(ValueError, match="max_inflight_batches"):
        BatchingConfig(max_inflight_batches=0)


def test_defaults_live_once():
    assert Settings().max_batch_tokens == BatchingConfig().max_batch_tokens
    assert Settings().max_inflight_batches == BatchingConfig().max_inflight_batches


def test_router_serve_refuses_to_start_and_names_the_setting():
    env = dict(os.environ, MODELROUTER_MAX_INFLIGHT_BATCHES="0")
    done = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--port", "0"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "max_inflight_batches" in done.stderr
