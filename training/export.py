"""ONNX export of the student, parity against torch, int8 variant, and the bundle writer.

The exported graph has inputs `input_ids`, `attention_mask` (int64 [batch, seq], both axes dynamic) and
output `embeddings` (float32 [batch, dim], pooled, not normalised), plus `token_features` (per-position
projected features, [batch, seq, dim]) for the Explain feature when asked for.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedder.bundle import Bundle, save_bundle
from training.config import load_job_config
from training.model import CNNEncoder, ModelConfig, architecture_summary, count_parameters, macs_per_token
from training.teacher import teacher_tokenizer_path

OPSET = 17


class _Exported(nn.Module):
    """Wraps the encoder so the graph has the bundle's output names (and optionally token features)."""

    def __init__(self, model: CNNEncoder, with_token_features: bool) -> None:
        super().__init__()
        self.model = model
        self.with_token_features = with_token_features

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        feats = self.model.token_features(input_ids, attention_mask)
        count = attention_mask.sum(dim=1, keepdim=True).clamp(min=1).to(feats.dtype)
        pooled = feats.sum(dim=1) / count
        emb = self.model.proj(pooled)
        if not self.with_token_features:
            return emb
        # Per-token projected contributions: emb = sum_t token_features[t] + bias (exactly linear).
        per_token = torch.nn.functional.linear(feats, self.model.proj.weight) / count[:, :, None]
        return emb, per_token


def export_onnx(model: CNNEncoder, path: Path, with_token_features: bool = False) -> Path:
    model = model.eval()
    wrapper = _Exported(model, with_token_features).eval()
    ids = torch.randint(1000, 2000, (2, 16), dtype=torch.int64)
    mask = torch.ones_like(ids)
    outputs = ["embeddings", "token_features"] if with_token_features else ["embeddings"]
    axes = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
        "embeddings": {0: "batch"},
    }
    if with_token_features:
        axes["token_features"] = {0: "batch", 1: "seq"}
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


def quantize_int8(fp32_path: Path, out_path: Path) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8)
    return out_path


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True)
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
) -> Bundle:
    """Export (unless an ONNX file is given) and write a verified bundle."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Serving graph: embeddings only (a token_features output would cost a [B,T,P]x[P,dim] MatMul per call).
    onnx_path = onnx_file or export_onnx(model, out_dir / "model.onnx")
    cfg: ModelConfig = model.cfg
    return save_bundle(
        out_dir,
        onnx_path,
        _clean_tokenizer(out_dir / "tokenizer.json"),
        name=name,
        version=version,
        dim=cfg.out_dim,
        max_tokens=max_tokens,
        pad_token_id=cfg.pad_token_id,
        parameters=count_parameters(model),
        architecture=architecture_summary(cfg),
        source={**source, "macs_per_token": macs_per_token(cfg)},
        metrics=metrics,
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
