"""Last stage of the job: evaluate, export fp32 + int8, check parity, time both, write the bundle.

The variant shipped is the one the measured table favours: int8 only if it is faster *and* keeps STS-B
dev within `INT8_MAX_DROP` points of fp32 (PERF_NOTES: dynamic int8 often slows convolutions here).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from training import evaluate
from training.config import JobConfig
from training.data import pad_batch
from training.export import export_onnx, git_commit, parity, quantize_int8, write_bundle
from training.model import CNNEncoder, count_parameters, macs_per_token
from training.teacher import TEACHER_NAME, teacher_tokenizer_path
from training.train import CLS_ID, SEP_ID, run_eval

INT8_MAX_DROP = 0.5


def parity_batches(
    texts: list[str], max_tokens: int, n: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n` real texts in batches of 32 of mixed lengths (so padding is exercised)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(teacher_tokenizer_path()))
    tok.no_padding()
    tok.no_truncation()
    rng = np.random.default_rng(seed)
    picked = [texts[i] for i in rng.choice(len(texts), min(n, len(texts)), replace=False)]
    pieces = [np.asarray(e.ids[: max_tokens - 2]) for e in tok.encode_batch(picked, add_special_tokens=False)]
    return [pad_batch(pieces[i : i + 32], CLS_ID, SEP_ID, 0) for i in range(0, len(pieces), 32)]


def onnx_items_per_s(path: Path, batch: int = 64, tokens: int = 32, seconds: float = 3.0) -> float:
    """Model-only throughput at batch x tokens, one single-threaded session (the serving default)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(1000, 29000, (batch, tokens)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for _ in range(3):
        sess.run(None, feeds)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, feeds)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def onnx_quality(path: Path, job: JobConfig, ev: tuple[list[str], np.ndarray]) -> dict[str, float]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def enc_ordered(texts: Sequence[str]) -> np.ndarray:
        return _encode_ordered(sess, list(texts), job.train.max_tokens)

    out = {"stsb_dev_spearman": evaluate.sts_spearman(enc_ordered, evaluate.load_sts("dev"))}
    out.update(
        evaluate.teacher_agreement(
            enc_ordered(ev[0]), np.asarray(ev[1], np.float32), job.eval.agreement_pairs
        )
    )
    return out


def _encode_ordered(sess: ort.InferenceSession, texts: list[str], max_tokens: int) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(teacher_tokenizer_path()))
    tok.no_padding()
    tok.no_truncation()
    pieces = [np.asarray(e.ids[: max_tokens - 2]) for e in tok.encode_batch(texts, add_special_tokens=False)]
    order = np.argsort([len(p) for p in pieces])
    out: np.ndarray | None = None
    for start in range(0, len(order), 256):
        idx = order[start : start + 256]
        ids, mask = pad_batch([pieces[i] for i in idx], CLS_ID, SEP_ID, 0)
        emb = sess.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})[0]
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        out[idx] = emb
    if out is None:
        raise ValueError("no texts to encode")
    return out


def publish(
    job: JobConfig, model: CNNEncoder, heldout: list[str], ev: tuple[list[str], np.ndarray], out_dir: Path
) -> dict[str, Any]:
    model = model.eval()
    run_dir = job.run_dir
    torch_metrics = run_eval(model, job, *ev)
    fp32 = export_onnx(model, run_dir / "model.fp32.onnx")
    max_diff = parity(
        model, fp32, parity_batches(heldout, job.train.max_tokens, job.export.parity_texts, job.train.seed)
    )
    if max_diff > 1e-4:
        raise RuntimeError(f"ONNX parity failed: max abs diff {max_diff:.2e} > 1e-4")
    variants: dict[str, dict[str, Any]] = {"fp32": {"path": fp32}}
    if job.export.int8:
        variants["int8"] = {"path": quantize_int8(fp32, run_dir / "model.int8.onnx")}
    for v in variants.values():
        v["items_per_s"] = onnx_items_per_s(v["path"])
        v["quality"] = onnx_quality(v["path"], job, ev)
    chosen = _choose(variants)
    report = {
        "parameters": count_parameters(model),
        "macs_per_token": macs_per_token(model.cfg),
        "torch_metrics": torch_metrics,
        "parity_max_abs_diff": max_diff,
        "variants": {
            k: {kk: (str(vv) if kk == "path" else vv) for kk, vv in v.items()} for k, v in variants.items()
        },
        "chosen": chosen,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    q = variants[chosen]["quality"]
    write_bundle(
        model,
        out_dir,
        name=job.export.name,
        version=job.export.version,
        max_tokens=job.train.max_tokens,
        source={
            "config": job.to_dict(),
            "git_commit": git_commit(),
            "teacher": TEACHER_NAME,
            "variant": chosen,
        },
        metrics={**{k: round(float(v), 4) for k, v in q.items()}, "parity_max_abs_diff": max_diff},
        onnx_file=Path(variants[chosen]["path"]),
    )
    print(json.dumps(report, indent=2))
    return report


def _choose(variants: dict[str, dict[str, Any]]) -> str:
    if "int8" not in variants:
        return "fp32"
    f, i = variants["fp32"], variants["int8"]
    drop = f["quality"]["stsb_dev_spearman"] - i["quality"]["stsb_dev_spearman"]
    return "int8" if i["items_per_s"] > f["items_per_s"] and drop <= INT8_MAX_DROP else "fp32"
