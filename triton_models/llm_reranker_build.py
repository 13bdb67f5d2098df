"""Build the LLM reranker: SmolLM2-135M-Instruct (the generation model's weights) as a yes/no judge.

The graph takes what any rerank model takes (`input_ids`, `attention_mask`: one right-padded row per
(query, document window) prompt, built by the router from the model's `modelrouter.pair_template`) and
returns one score per row: the probability of "yes" against "no" as the next token after the prompt,
softmax over those two logits at the last real position. This is how Qwen3-Reranker is used; only the
weights, the template and the two answer tokens change. The judgement head is two rows of the LM head,
so the graph never computes the whole vocabulary's logits.

Needs the generation model's de-quantized weights (`smollm2-135m-instruct/hf`, built first by
llm_build.py). The export is checked against transformers: alone, in a right-padded batch, and on a
sanity pair (an on-topic document above an off-topic one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SOURCE = "smollm2-135m-instruct"
ANSWERS = ("yes", "no")
"""The judgement tokens: each must be one token of the tokenizer."""
OPSET = 17


def log(message: str) -> None:
    print(f"[models] {message}", flush=True)


def pair_template(model_dir: Path) -> str:
    """`modelrouter.pair_template` from the model's config.pbtxt (the router builds prompts from the same)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return config.parameters["modelrouter.pair_template"].string_value


def build_llm_reranker(model_dir: Path, source_dir: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    started = time.perf_counter()
    hf_dir = source_dir / "hf"
    log(f"{model_dir.name}: [1/4] loading {hf_dir}")
    if not (hf_dir / "model.safetensors").exists():
        raise SystemExit(f"{hf_dir} is missing: build {SOURCE} first")
    lm = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    spec = json.loads((source_dir / "tokenizer.json").read_text())
    (model_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    yes, no = (tokenizer.token_to_id(token) for token in ANSWERS)
    if yes is None or no is None:
        raise SystemExit(f"the judgement tokens {ANSWERS} are not single tokens of the tokenizer")

    class YesNoJudge(torch.nn.Module):
        def __init__(self, model: LlamaForCausalLM) -> None:
            super().__init__()
            self.body = model.model
            self.register_buffer("head", model.lm_head.weight[[no, yes]].detach().clone())

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            last = attention_mask.sum(dim=1) - 1  # rows are right-padded
            final = hidden[torch.arange(hidden.shape[0]), last]
            logits = final @ self.head.T  # [batch, (no, yes)]
            return torch.softmax(logits, dim=-1)[:, 1:]

    judge = YesNoJudge(lm).eval()
    onnx_path = model_dir / "1" / "model.onnx"
    ids = torch.randint(0, 1000, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # traced with padding, so the mask stays in the graph
    log(f"{model_dir.name}: [2/4] exporting ONNX (opset {OPSET})")
    with torch.no_grad():
        torch.onnx.export(
            judge,
            (ids, mask),
            str(onnx_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["score"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "score": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )

    log(f"{model_dir.name}: [3/4] checking the export against transformers, alone and right-padded")
    template = pair_template(model_dir)
    head, rest = template.split("{query}")
    middle, tail = rest.split("{document}")
    query = "What is the capital of France?"
    documents = ["Paris is the capital and largest city of France.", "Bananas are rich in potassium."]
    prompts = [
        [t for piece in (head, query, middle, doc, tail) for t in tokenizer.encode(piece, add_special_tokens=False).ids]
        for doc in documents
    ]
    reference = []
    for prompt in prompts:
        with torch.no_grad():
            logits = lm(torch.tensor([prompt])).logits[0, -1, [no, yes]]
        reference.append(float(torch.softmax(logits, dim=-1)[1]))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    width = max(len(p) for p in prompts)
    batch_ids = np.array([p + [0] * (width - len(p)) for p in prompts], np.int64)
    batch_mask = np.array([[1] * len(p) + [0] * (width - len(p)) for p in prompts], np.int64)
    batched = session.run(None, {"input_ids": batch_ids, "attention_mask": batch_mask})[0][:, 0]
    worst = float(np.abs(batched - np.array(reference)).max())
    if worst > 1e-4:
        raise SystemExit(f"export differs from transformers by {worst:.2e}")
    log(f"{model_dir.name}:       max |onnx batch - transformers alone| = {worst:.1e}")
    log(f"{model_dir.name}:       {query!r}: on-topic {batched[0]:.3f}, off-topic {batched[1]:.3f}")
    if not batched[0] > batched[1]:
        raise SystemExit("the sanity pair is out of order")
    size_mb = onnx_path.stat().st_size / 1e6
    log(f"{model_dir.name}: [4/4] done in {time.perf_counter() - started:.1f}s ({size_mb:.0f} MB)")
