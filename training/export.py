"""ONNX export of the student, parity against torch, int8 variant, and the bundle writer.

The exported graph has inputs `input_ids`, `attention_mask` (int64 [batch, seq], both axes dynamic) and
output `embeddings` (float32 [batch, dim], pooled, not normalised).

CNN bundles also carry `explain.onnx`, a second graph for the Explain RPC (docs/explain.md): same inputs,
outputs `embeddings`, `token_contributions` [batch, seq, dim] = W f_t / n (zero at padding) and `bias`
[batch, dim], with embeddings = sum_t token_contributions + bias. A second graph, so the serving
`model.onnx` does not pay for it. `python -m training.export add-explain` adds one to an existing bundle.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedder.core.bundle import EXPLAIN_FILE, Bundle, load_bundle, save_bundle
from training.config import load_job_config
from training.model import CNNEncoder, ModelConfig, architecture_summary, count_parameters, macs_per_token
from training.teacher import teacher_tokenizer_path

OPSET = 17


class _Exported(nn.Module):
    """The encoder's own forward (each branch pooled before the concat), under the bundle's names.

    Not `token_features()` + pool: concatenating the [B, C+E, 1, T] maps before pooling exports a graph
    that ONNX Runtime runs ~25% slower. The per-token form lives in explain.onnx only.
    """

    def __init__(self, model: CNNEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(input_ids, attention_mask)
        return out


def export_onnx(model: CNNEncoder, path: Path) -> Path:
    model = model.eval()
    wrapper = _Exported(model).eval()
    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.int64)
    mask = torch.ones_like(ids)
    outputs = ["embeddings"]
    axes = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
        "embeddings": {0: "batch"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    return path


class _ExplainGraph(nn.Module):
    """explain.onnx: embeddings (computed as the model does), per-position contributions, the bias."""

    def __init__(self, model: CNNEncoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        # [B, T, P]: each position's features times its pooling weight (1/n, or its attention weight).
        feats = self.model.token_features(input_ids, attention_mask)
        emb = self.model.proj(feats.sum(dim=1))
        # W (sum_t w_t f_t) + b = sum_t W (w_t f_t) + b: exact, since pooling is linear in f and proj is.
        contrib = nn.functional.linear(feats, self.model.proj.weight)
        bias = self.model.proj.bias.unsqueeze(0).expand(input_ids.shape[0], -1)
        return emb, contrib, bias


def export_explain(model: CNNEncoder, path: Path) -> Path:
    """Write explain.onnx for `model` (see the module docstring)."""
    wrapper = _ExplainGraph(model.eval()).eval()
    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.int64)
    axes = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
        "embeddings": {0: "batch"},
        "token_contributions": {0: "batch", 1: "seq"},
        "bias": {0: "batch"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids, torch.ones_like(ids)),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["embeddings", "token_contributions", "bias"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    return path


def explain_parity(model: CNNEncoder, explain_path: Path, seed: int = 0) -> float:
    """Max abs difference between torch embeddings and the explain graph's sum of parts + bias,
    over random padded batches of several shapes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(explain_path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        for batch, seq in ((1, 5), (3, 17), (8, 40)):
            ids = torch.randint(1000, 29000, (batch, seq), generator=gen)
            lengths = torch.randint(2, seq + 1, (batch,), generator=gen)
            mask = (torch.arange(seq)[None, :] < lengths[:, None]).to(torch.int64)
            ids = ids * mask + model.cfg.pad_token_id * (1 - mask)
            ref = model.eval()(ids, mask).numpy()
            feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
            contrib, bias = sess.run(["token_contributions", "bias"], feeds)
            worst = max(worst, float(np.abs(contrib.sum(axis=1) + bias - ref).max()))
    return worst


def _checked_explain(model: CNNEncoder, path: Path) -> Path:
    export_explain(model, path)
    diff = explain_parity(model, path)
    if diff > 1e-4:
        raise RuntimeError(f"explain graph parity failed: max abs diff {diff:.2e} > 1e-4")
    return path


def parity(model: CNNEncoder, onnx_path: Path, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Max abs difference between torch and ONNX Runtime embeddings over the given padded batches."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    model = model.eval()
    with torch.no_grad():
        for ids, mask in batches:
            ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            got = sess.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})[0]
            worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def git_commit() -> str:
    """HEAD, with "-dirty" if the code that builds a model (training/, its configs, embedder/) has
    uncommitted changes. Docs, tests and benchmarks do not change a model, so they do not count."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "training", "embedder"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_bundle(
    model: CNNEncoder,
    out_dir: Path,
    *,
    name: str,
    version: str,
    max_tokens: int,
    source: dict[str, Any],
    metrics: dict[str, float],
    onnx_file: Path | None = None,
    matryoshka_dims: Sequence[int] = (),
    explain: bool = True,
    quantize_explain: Callable[[Path, Path], Path] | None = None,
) -> Bundle:
    """Export (unless an ONNX file is given) and write a verified bundle, with explain.onnx if `explain`.

    The explain graph is exported fp32 from `model`'s weights and checked against torch; with
    `quantize_explain(src, dst)` it is then quantised like the served variant `onnx_file`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # Serving graph: embeddings only (a token_features output would cost a [B,T,P]x[P,dim] MatMul per call).
    onnx_path = onnx_file or export_onnx(model, out_dir / "model.onnx")
    explain_path = None
    if explain and quantize_explain is None:
        explain_path = _checked_explain(model, out_dir / EXPLAIN_FILE)
    elif explain and quantize_explain is not None:
        with tempfile.TemporaryDirectory() as tmp:
            fp32_explain = _checked_explain(model, Path(tmp) / EXPLAIN_FILE)
            explain_path = quantize_explain(fp32_explain, out_dir / EXPLAIN_FILE)
    cfg: ModelConfig = model.cfg
    return save_bundle(
        out_dir,
        onnx_path,
        _clean_tokenizer(out_dir / "tokenizer.json"),
        explain_file=explain_path,
        name=name,
        version=version,
        dim=cfg.out_dim,
        max_tokens=max_tokens,
        pad_token_id=cfg.pad_token_id,
        parameters=count_parameters(model),
        architecture=architecture_summary(cfg),
        source={**source, "macs_per_token": macs_per_token(cfg)},
        metrics=metrics,
        matryoshka_dims=sorted(matryoshka_dims),
    )


def _clean_tokenizer(dest: Path) -> Path:
    """The teacher's tokenizer without its fixed padding/truncation (the server pads per batch)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(teacher_tokenizer_path()))
    tok.no_padding()
    tok.no_truncation()
    tok.save(str(dest))
    return dest


def _randomize_batchnorm(model: nn.Module, gen: torch.Generator) -> None:
    """Random weights everywhere, including BN stats, so the graph computes something non-trivial."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.running_mean.normal_(0.0, 0.1, generator=gen)  # type: ignore[union-attr]
                m.running_var.uniform_(0.5, 1.5, generator=gen)  # type: ignore[union-attr]


def export_random_bundle(out_dir: Path, config_path: str | None = None, seed: int = 0) -> Path:
    """A servable bundle of the real architecture with random weights (for serving tests and benchmarks).

    `config_path` picks the architecture (default: training/configs/tiny.toml's [model] table).
    """
    cfg_file = config_path or str(Path(__file__).parent / "configs" / "tiny.toml")
    job = load_job_config(cfg_file)
    torch.manual_seed(seed)
    model = CNNEncoder(job.model)
    _randomize_batchnorm(model, torch.Generator().manual_seed(seed))
    write_bundle(
        model.eval(),
        Path(out_dir),
        name=f"random-{Path(cfg_file).stem}",
        version="0.0.0",
        max_tokens=job.train.max_tokens,
        source={"random_weights": True, "config": cfg_file, "seed": seed},
        metrics={},
    )
    return Path(out_dir)


def add_explain(bundle_dir: Path, model: CNNEncoder, min_cosine: float = 0.99) -> Bundle:
    """Add explain.onnx to an existing bundle exported from `model` (e.g. one written before Explain).

    Refuses a checkpoint that is not the bundle's model: the explain graph's embeddings must match the
    bundle's model.onnx (cosine >= `min_cosine` on every test row; an int8 model.onnx is not exact).
    """
    import onnxruntime as ort

    bundle = load_bundle(bundle_dir)
    if model.cfg.out_dim != bundle.manifest.dim:
        raise ValueError(f"checkpoint dim {model.cfg.out_dim} != bundle dim {bundle.manifest.dim}")
    path = _checked_explain(model, bundle_dir / EXPLAIN_FILE)
    ids = np.random.default_rng(0).integers(1000, 29000, (8, 24)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    served = ort.InferenceSession(str(bundle.model_path)).run(["embeddings"], feeds)[0]
    mine = ort.InferenceSession(str(path)).run(["embeddings"], feeds)[0]
    cos = (served * mine).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(mine, axis=1))
    if float(cos.min()) < min_cosine:
        path.unlink()
        raise ValueError(f"checkpoint does not match {bundle_dir}/model.onnx (min cosine {cos.min():.4f})")
    fields = bundle.manifest.writer_fields()
    return save_bundle(bundle_dir, bundle.model_path, bundle.tokenizer_path, explain_file=path, **fields)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bundle export tools")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add-explain", help="add explain.onnx to an existing bundle from its checkpoint")
    add.add_argument("--bundle", required=True, type=Path)
    add.add_argument("--checkpoint", required=True, type=Path, help="the training run's last.pt")
    args = parser.parse_args(argv)
    from training.student import load_model

    bundle = add_explain(args.bundle, load_model(args.checkpoint))
    print(f"{bundle.path}: added {bundle.manifest.explain_model} (sha256 {bundle.manifest.explain_sha256})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
