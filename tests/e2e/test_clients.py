"""Calling teams' clients, generated from protos/ alone, use the v1 fields: a Node client (@grpc/grpc-js
and @grpc/proto-loader, installed by `make test`) gets what the Python stubs get."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np

from router.grpc.gen.modelrouter.v1 import model_router_service_pb2 as pb
from router.settings import PROJECT_ROOT
from tests.helpers import EMBED_MODEL, GENERATE_MODEL, LLM_RERANK_MODEL, RERANK_MODEL

NODE_MODULES = PROJECT_ROOT / ".tools" / "node_modules"
CLIENT = PROJECT_ROOT / "tests" / "clients" / "v1_client.cjs"


def test_a_node_client_built_from_the_protos_uses_the_v1_fields(router_target, stub):
    node = shutil.which("node")
    assert node, "node is needed (make test installs the client libraries with npm)"
    assert (NODE_MODULES / "@grpc" / "grpc-js").is_dir(), "run `make test`: it installs @grpc/grpc-js"
    done = subprocess.run(
        [node, str(CLIENT), router_target, str(PROJECT_ROOT / "protos"), EMBED_MODEL, RERANK_MODEL],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["pages"] == [[name] for name in sorted([EMBED_MODEL, RERANK_MODEL, GENERATE_MODEL, LLM_RERANK_MODEL])]
    assert got["score_type"] == "SCORE_TYPE_SIMILARITY" and got["versions"] == ["1"]
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello"]
    reference = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=texts), timeout=60)
    expected = np.array([e.values for e in reference.embeddings], dtype=np.float32)
    assert np.array_equal(np.array(got["floats"], dtype=np.float32), expected)
    assert np.array_equal(np.array(got["raw"], dtype=np.float32), expected)  # bytes, bit for bit
    assert got["raw_encoding"] == "ENCODING_FLOAT32_BYTES" and got["float_version"] == "1"
    r = stub.GetModel(pb.GetModelRequest(name=EMBED_MODEL), timeout=30).model.quantization_range
    assert np.abs(np.array(got["int8"]) * r / 127 - expected).max() <= r / 127
    assert [u["windows"] for u in got["usage"]] == [1, 1] and got["usage"][1]["tokens"] == 3
    assert got["window_text"] == got["window_code_points"] and "fox" in got["window_text"]
    assert got["error"]["code"] == 5  # NOT_FOUND
    assert got["streamed"] == [{"offset": 0, "count": 3}, {"offset": 3, "count": 1}, {"offset": 4, "count": 2}]
