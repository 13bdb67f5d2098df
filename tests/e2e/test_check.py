"""`router check` on the project's own repository, and with --triton against the session's real Triton."""

from __future__ import annotations

import json
import subprocess
import sys

from router.cli import main
from router.settings import PROJECT_ROOT
from tests.helpers import EMBED_MODEL, GENERATE_MODEL, LLM_RERANK_MODEL, REPOSITORY, RERANK_MODEL


def router_check(*arguments: str) -> subprocess.CompletedProcess:
    """`router check` as a deployer runs it: its own process."""
    command = [sys.executable, "-m", "router", "check", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT)


def test_the_repository_passes_and_every_model_answers_one_call(triton):
    done = router_check(str(REPOSITORY), "--triton", triton.grpc_address, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    by_name = {m["name"]: m for m in report["models"]}
    assert set(by_name) == {EMBED_MODEL, RERANK_MODEL, GENERATE_MODEL, LLM_RERANK_MODEL}
    assert all(m["findings"] == [] for m in by_name.values()), by_name
    assert by_name[EMBED_MODEL]["smoke"].startswith("1 embedding of 384 dimensions")
    assert by_name[RERANK_MODEL]["smoke"].startswith("2 scores")
    assert by_name[LLM_RERANK_MODEL]["kind"] == "rerank (LLM judgement)"
    assert by_name[GENERATE_MODEL]["smoke"].startswith("generated ")


def test_a_triton_that_does_not_answer_is_an_error():
    done = router_check(str(REPOSITORY), "--triton", "127.0.0.1:1")
    assert done.returncode == 1
    assert "127.0.0.1:1 is not ready" in done.stdout


def test_the_gpu_repositories_pass(capsys):
    """The GPU configs hold the same contract: onnxruntime's is complete (make models links the ONNX files);
    TensorRT's plans are built on the GPU machine, so its configs are checked without them."""
    gpu = REPOSITORY.parent / "gpu"
    assert main(["check", str(gpu / "onnxruntime")]) == 0
    assert main(["check", "--no-weights", str(gpu / "tensorrt")]) == 0
    assert main(["check", str(gpu / "tensorrt")]) == 1
    assert "1/model.plan is missing (the tensorrt backend loads it)" in capsys.readouterr().out
