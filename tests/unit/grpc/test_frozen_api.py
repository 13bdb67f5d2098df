"""v1 is frozen: `buf breaking` against protos/frozen/ passes for the protos as they are and fails for a
change that would break a generated client (the same check `make lint` runs)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from router.settings import PROJECT_ROOT

BUF = PROJECT_ROOT / ".tools" / "node_modules" / ".bin" / "buf"
BASELINE = PROJECT_ROOT / "protos" / "frozen" / "modelrouter-v1.json"
pytestmark = pytest.mark.skipif(not BUF.exists(), reason="buf is installed by `make test` and `make lint`")


def breaking(protos) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BUF), "breaking", str(protos), "--against", str(BASELINE)], capture_output=True, text=True, timeout=120
    )


def test_the_protos_as_they_are_keep_v1(tmp_path):
    assert breaking(PROJECT_ROOT / "protos").returncode == 0


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("  int32 best_window_end_utf8 = 8;", "  int32 best_window_stop_utf8 = 8;"),  # renamed
        ("  int32 best_window_end_utf8 = 8;", "  int64 best_window_end_utf8 = 8;"),  # retyped
        ("  rpc GetModel(GetModelRequest) returns (GetModelResponse);", ""),  # an RPC gone
    ],
)
def test_a_change_that_breaks_a_generated_client_fails(tmp_path, old, new):
    protos = tmp_path / "protos"
    shutil.copytree(PROJECT_ROOT / "protos", protos)
    service = protos / "modelrouter" / "v1" / "model_router_service.proto"
    text = service.read_text()
    assert old in text
    service.write_text(text.replace(old, new))
    assert breaking(protos).returncode != 0


def test_adding_a_field_does_not_break(tmp_path):
    protos = tmp_path / "protos"
    shutil.copytree(PROJECT_ROOT / "protos", protos)
    service = protos / "modelrouter" / "v1" / "model_router_service.proto"
    old = "  int32 best_window_end_utf8 = 8;\n"
    service.write_text(service.read_text().replace(old, old + "  // A new field.\n  string added = 9;\n"))
    assert breaking(protos).returncode == 0
