"""`router check`: one broken repository per mistake, made here, each reported by name; a good one passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.corpus import TOKENIZER
from router import check
from router.cli import main

EMBED = """
name: "__NAME__"
backend: "python"
max_batch_size: 8
input [
  { name: "input_ids", data_type: TYPE_INT64, dims: [ -1 ] },
  { name: "attention_mask", data_type: TYPE_INT64, dims: [ -1 ] }
]
output [ { name: "embedding", data_type: TYPE_FP32, dims: [ 384 ] } ]
dynamic_batching {
  priority_levels: 3
  default_priority_level: 2
  default_queue_policy { max_queue_size: 16 }
}
parameters { key: "modelrouter.task", value: { string_value: "embed" } }
parameters { key: "modelrouter.tokenizer", value: { string_value: "tokenizer.json" } }
parameters { key: "modelrouter.max_sequence_length", value: { string_value: "256" } }
"""

GENERATE = """
name: "__NAME__"
backend: "python"
max_batch_size: 4
model_transaction_policy { decoupled: true }
input [
  { name: "input_ids", data_type: TYPE_INT32, dims: [ -1 ] },
  { name: "input_lengths", data_type: TYPE_INT32, dims: [ 1 ] },
  { name: "request_output_len", data_type: TYPE_INT32, dims: [ 1 ] },
  { name: "temperature", data_type: TYPE_FP32, dims: [ 1 ], optional: true }
]
output [ { name: "output_ids", data_type: TYPE_INT32, dims: [ -1, -1 ] } ]
parameters { key: "modelrouter.task", value: { string_value: "generate" } }
parameters { key: "modelrouter.tokenizer", value: { string_value: "tokenizer.json" } }
parameters { key: "modelrouter.max_sequence_length", value: { string_value: "512" } }
parameters { key: "modelrouter.end_tokens", value: { string_value: "[SEP]" } }
parameters { key: "modelrouter.generate_options", value: { string_value: "temperature" } }
"""


def clean_tokenizer() -> str:
    spec = json.loads(TOKENIZER.read_text())
    spec["truncation"], spec["padding"] = None, None
    return json.dumps(spec)


def add_model(repository: Path, name: str, config: str, tokenizer: str | None = None, version: bool = True) -> Path:
    folder = repository / name
    folder.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config.replace("__NAME__", name))
    (folder / "tokenizer.json").write_text(clean_tokenizer() if tokenizer is None else tokenizer)
    if version:
        (folder / "1").mkdir()
        (folder / "1" / "model.py").write_text("# the backend's code\n")
    return folder


def findings(repository: Path) -> dict[str, list[tuple[str, str, str]]]:
    return {r.name: [(f.severity, f.check, f.message) for f in r.findings] for r in check.check_repository(repository)}


def only(repository: Path, name: str) -> tuple[str, str, str]:
    [finding] = findings(repository)[name]
    return finding


def test_a_good_repository_passes(tmp_path, capsys):
    add_model(tmp_path, "embedder", EMBED)
    add_model(tmp_path, "generator", GENERATE)
    add_model(tmp_path, "helper", 'name: "helper"\nbackend: "python"\n')  # not routed: left alone
    assert findings(tmp_path) == {"embedder": [], "generator": [], "helper": []}
    assert main(["check", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "embedder" in out and "not routed" in out and "0 errors" in out


def test_a_config_that_does_not_parse(tmp_path):
    add_model(tmp_path, "m", EMBED.replace("max_batch_size: 8", "max_batch_size: eight"))
    severity, what, message = only(tmp_path, "m")
    assert (severity, what) == ("error", "config") and "ModelConfig" in message and "max_batch_size" in message


def test_a_config_naming_another_model(tmp_path):
    add_model(tmp_path, "m", EMBED.replace('name: "__NAME__"', 'name: "other"'))
    assert only(tmp_path, "m")[:2] == ("error", "config")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('parameters { key: "modelrouter.tokenizer"', 'parameters { key: "unrelated"'), "modelrouter.tokenizer"),
        (("modelrouter.max_sequence_length", "modelrouter.max_seq_length"), "did you mean"),
        (('string_value: "embed"', 'string_value: "translate"'), "unknown task"),
    ],
)
def test_missing_unknown_or_invalid_parameters(tmp_path, edit, expected):
    add_model(tmp_path, "m", EMBED.replace(*edit))
    messages = [m for severity, what, m in findings(tmp_path)["m"] if (severity, what) == ("error", "parameters")]
    assert any(expected in m for m in messages), messages


def test_a_tokenizer_that_does_not_load(tmp_path):
    add_model(tmp_path, "m", EMBED, tokenizer='{"version": "1.0", "model": "nonsense"}')
    severity, what, message = only(tmp_path, "m")
    assert (severity, what) == ("error", "files") and "does not load" in message


def test_the_shipped_minilm_tokenizer_truncating_at_128(tmp_path, capsys):
    add_model(tmp_path, "m", EMBED, tokenizer=TOKENIZER.read_text())
    severity, what, message = only(tmp_path, "m")
    assert (severity, what) == ("warning", "tokenizer") and "truncates at 128" in message and "256" in message
    assert main(["check", str(tmp_path)]) == 0  # a warning does not fail the check


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('name: "input_ids", data_type: TYPE_INT64', 'name: "ids", data_type: TYPE_INT64'), "no input_ids"),
        (('"input_ids", data_type: TYPE_INT64', '"input_ids", data_type: TYPE_INT32'), "TYPE_INT32"),
        (
            (
                '{ name: "attention_mask"',
                '{ name: "position_ids", data_type: TYPE_INT64, dims: [ -1 ] },\n{ name: "attention_mask"',
            ),
            "never sends",
        ),
        (("dims: [ 384 ]", "dims: [ -1, 384 ]"), "one pooled vector"),
        (("TYPE_FP32", "TYPE_FP16"), "TYPE_FP16"),
        (("max_batch_size: 8", "max_batch_size: 0"), "max_batch_size"),
    ],
)
def test_tensors_that_do_not_match_the_embed_contract(tmp_path, edit, expected):
    add_model(tmp_path, "m", EMBED.replace(*edit))
    messages = [m for severity, _, m in findings(tmp_path)["m"] if severity == "error"]
    assert any(expected in m for m in messages), findings(tmp_path)


def test_an_optional_extra_input_is_fine(tmp_path):
    extra = '{ name: "position_ids", data_type: TYPE_INT64, dims: [ -1 ], optional: true },\n{ name: "attention_mask"'
    add_model(tmp_path, "m", EMBED.replace('{ name: "attention_mask"', extra))
    assert findings(tmp_path)["m"] == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("model_transaction_policy { decoupled: true }", ""), "decoupled"),
        (('string_value: "temperature"', 'string_value: "temperature,seed"'), "'random_seed'"),
        (('string_value: "[SEP]"', 'string_value: "<|im_end|>"'), "end_tokens"),
    ],
)
def test_generate_models(tmp_path, edit, expected):
    add_model(tmp_path, "g", GENERATE.replace(*edit))
    assert any(expected in m for _, _, m in findings(tmp_path)["g"]), findings(tmp_path)


def test_versions(tmp_path):
    add_model(tmp_path, "none", EMBED, version=False)
    folder = add_model(tmp_path, "empty", EMBED)
    (folder / "1" / "model.py").unlink()
    folder = add_model(
        tmp_path,
        "pinned",
        EMBED.replace('backend: "python"', 'backend: "python"\nversion_policy: { specific: { versions: [ 2 ] } }'),
    )
    found = findings(tmp_path)
    assert found["none"][0][:2] == ("error", "versions") and "no version folder" in found["none"][0][2]
    assert "1/model.py is missing" in found["empty"][0][2]
    assert any("version 2, which has no folder" in m for _, _, m in found["pinned"])


def test_onnxruntime_weights_may_be_skipped_before_a_build(tmp_path, capsys):
    add_model(tmp_path, "gpu", EMBED.replace('backend: "python"', 'backend: "onnxruntime"'))
    assert "1/model.onnx is missing (the onnxruntime backend loads it)" in only(tmp_path, "gpu")[2]
    assert main(["check", str(tmp_path)]) == 1
    assert main(["check", "--no-weights", str(tmp_path)]) == 0


def test_a_missing_or_unbounded_queue_policy(tmp_path):
    start = EMBED.index("dynamic_batching")
    end = EMBED.index("parameters")
    add_model(tmp_path, "none", EMBED[:start] + EMBED[end:])
    add_model(
        tmp_path,
        "unbounded",
        EMBED.replace("max_queue_size: 16", "timeout_action: REJECT, default_timeout_microseconds: 60000000"),
    )
    found = findings(tmp_path)
    assert [(s, c) for s, c, _ in found["none"]] == [("warning", "queue")]
    assert sorted(m.split(":")[0] for _, _, m in found["unbounded"]) == [
        "default_queue_policy has no max_queue_size",
        "default_queue_policy sets default_timeout_microseconds",
    ]


def test_a_queue_without_priority_levels_is_warned_of(tmp_path):
    add_model(tmp_path, "flat", EMBED.replace("  priority_levels: 3\n  default_priority_level: 2\n", ""))
    [(severity, what, message)] = findings(tmp_path)["flat"]
    assert (severity, what) == ("warning", "queue") and "priority_levels" in message


def test_a_pair_template_that_leaves_no_room_for_documents(tmp_path):
    config = (
        EMBED.replace('string_value: "embed"', 'string_value: "rerank"').replace("dims: [ 384 ]", "dims: [ 1 ]")
        + 'parameters { key: "modelrouter.pair_template", value: { string_value: "'
        + "judge " * 100
        + '{query} {document}" } }\n'
    )
    add_model(tmp_path, "judge", config.replace("{query}", "{query}").replace("{document}", "{document}"))
    severity, what, message = only(tmp_path, "judge")
    assert (severity, what) == ("error", "files") and "pair_template" in message


def test_json_output_and_exit_codes(tmp_path, capsys):
    add_model(tmp_path, "good", EMBED)
    add_model(tmp_path, "bad", EMBED.replace("TYPE_FP32", "TYPE_STRING"))
    assert main(["check", "--json", str(tmp_path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    by_name = {m["name"]: m for m in report["models"]}
    assert by_name["good"]["errors"] == 0 and by_name["good"]["kind"] == "embed"
    assert by_name["bad"]["errors"] == 1 and by_name["bad"]["findings"][0]["check"] == "tensors"
    assert main(["check", str(tmp_path / "missing")]) == 2
