"""Settings are checked at start-up: a bad value stops the router, naming the setting."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from router import event_loop
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
        ("event_loop", "trio"),
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


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"tls_cert_file": "cert.pem"}, "go together"),
        ({"tls_client_ca_file": "ca.pem"}, "needs tls_cert_file"),
        ({"triton_tls_ca_file": "ca.pem"}, "servers named in `triton`"),
        ({"principals": {"batch": {"certificate_name": "batch.internal"}}}, "needs tls_client_ca_file"),
        ({"principals": {"nobody": {"tenant": "x"}}}, "needs key_sha256, certificate_name or both"),
        ({"principals": {"short": {"key_sha256": "abc"}}}, "key_sha256"),
    ],
)
def test_security_settings_that_cannot_work_are_refused(tmp_path, settings, named):
    for name in ("cert.pem", "ca.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    for key in ("tls_cert_file", "tls_client_ca_file", "triton_tls_ca_file"):
        if key in settings:
            settings = {**settings, key: tmp_path / settings[key]}
    with pytest.raises(ValidationError) as caught:
        Settings(**settings)
    assert named in str(caught.value)


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_router_runs_on_uvloop_by_default_and_on_asyncio_when_asked():
    assert Settings().event_loop == "auto"
    assert event_loop.run(_loop_module(), "auto").startswith("uvloop")
    assert event_loop.run(_loop_module(), "uvloop").startswith("uvloop")
    assert event_loop.run(_loop_module(), "asyncio").startswith("asyncio")


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert event_loop.run(_loop_module(), "auto").startswith("asyncio")
    with pytest.raises(ImportError):
        event_loop.run(_loop_module(), "uvloop")
    with pytest.raises(ValidationError) as caught:  # `router serve` stops with exit code 2, naming it
        Settings(event_loop="uvloop")
    assert caught.value.errors()[0]["loc"] == ("event_loop",)
