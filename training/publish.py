"""Last stage of the job: evaluate, export fp32 + int8 variants, check parity, time them, write the bundle.

Variants (training/quantize.py): fp32; `int8-dynamic`; `int8-pointwise` (static int8 on the dense 1x1
convs only). The variant shipped is the fastest one that keeps STS-B dev within `INT8_MAX_DROP` points
and held-out agreement within `INT8_MAX_AGREEMENT_DROP` of fp32, except that int8-pointwise is preferred
when it is within `PREFER_POINTWISE_WITHIN` of the fastest (see `_choose`). A pointwise-int8 bundle gets an
explain.onnx quantised with the same calibration, so Explain matches what is served.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from training.config import JobConfig
from training.export import export_onnx, git_commit, parity, write_bundle
from training.model import CNNEncoder, count_parameters, macs_per_token
from training.quantize import Batch, quantize_dynamic_int8, quantize_pointwise_int8
from training.student import encode_with, quality, run_eval
from training.teacher import TEACHER_NAME
from training.vocab import teacher_vocab

VARIANTS = ("fp32", "int8-dynamic", "int8-pointwise")
INT8_MAX_DROP = 0.5
INT8_MAX_AGREEMENT_DROP = 0.005
# A served text's embedding must not depend on its batch-mates (padding): alone vs batched, max abs diff.
BATCH_INDEPENDENCE_TOL = 1e-5
# int8-pointwise ships when it is at least this fraction as fast as the fastest acceptable variant: on
# AVX-512 VNNI it is 1.1-1.2x fp32, on AVX2-only CPUs about as fast (within this run-to-run noise), so
# the same job gives the same bundle on either kind instead of one decided by a few % of timing noise.
PREFER_POINTWISE_WITHIN = 0.90


def parity_batches(
    texts: list[str], max_tokens: int, n: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n` real texts in batches of 32 of mixed lengths (so padding is exercised)."""
    vocab = teacher_vocab()
    rng = np.random.default_rng(seed)
    picked = [texts[i] for i in rng.choice(len(texts), min(n, len(texts)), replace=False)]
    pieces = vocab.pieces(picked, max_tokens)
    return [vocab.batch(pieces[i : i + 32]) for i in range(0, len(pieces), 32)]


def _session_and_feeds(path: Path, batch: int, tokens: int) -> tuple[Any, dict[str, np.ndarray]]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ids = np.random.default_rng(0).integers(1000, 29000, (batch, tokens)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for _ in range(3):
        sess.run(None, feeds)
    return sess, feeds


def onnx_items_per_s(
    paths: dict[str, Path], batch: int = 64, tokens: int = 32, rounds: int = 7, seconds: float = 0.5
) -> dict[str, float]:
    """Model-only throughput at batch x tokens, one single-threaded session each (the serving default).

    The variants take turns, `rounds` times: this VM drifts between fast and slow states
    (docs/performance.md), so one long run per variant would compare states, not models. Returns each
    variant's median.
    """
    runs = {name: _session_and_feeds(path, batch, tokens) for name, path in paths.items()}
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, (sess, feeds) in runs.items():
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                sess.run(None, feeds)
                n += 1
            rates[name].append(n * batch / (time.perf_counter() - t0))
    return {name: float(np.median(r)) for name, r in rates.items()}


def onnx_quality(path: Path, job: JobConfig, ev: tuple[list[str], np.ndarray]) -> dict[str, float]:
    """STS-B dev and held-out agreement of an exported graph (and of each Matryoshka prefix)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})[0])

    return quality(
        lambda texts: encode_with(run, texts, job.train.max_tokens), job, ev, job.train.matryoshka_dims
    )


def build_variants(job: JobConfig, fp32: Path, calibration: list[Batch]) -> dict[str, dict[str, Any]]:
    """{name: {"path": ...}}: the fp32 graph and, with `export.int8`, its int8 variants in the run dir."""
    variants: dict[str, dict[str, Any]] = {"fp32": {"path": fp32}}
    if job.export.int8:
        run_dir = job.run_dir
        variants["int8-dynamic"] = {"path": quantize_dynamic_int8(fp32, run_dir / "model.int8-dynamic.onnx")}
        pointwise = quantize_pointwise_int8(fp32, run_dir / "model.int8-pointwise.onnx", calibration)
        variants["int8-pointwise"] = {"path": pointwise}
    return variants


def measure_and_choose(
    job: JobConfig,
    variants: dict[str, dict[str, Any]],
    ev: tuple[list[str], np.ndarray],
    batches: list[Batch],
) -> str:
    """Time every variant on this machine, score its quality and batch independence (into `variants`),
    and return the name of the one to ship (`_choose`)."""
    speeds = onnx_items_per_s({name: v["path"] for name, v in variants.items()})
    for name, v in variants.items():
        v["items_per_s"] = speeds[name]
        v["quality"] = onnx_quality(v["path"], job, ev)
        v["batch_independence_max_abs_diff"] = batch_independence(v["path"], batches)
    return _choose(variants)


def variants_report(variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`variants` as JSON can hold them (paths as strings)."""
    return {k: {kk: (str(vv) if kk == "path" else vv) for kk, vv in v.items()} for k, v in variants.items()}


def publish(
    job: JobConfig,
    model: CNNEncoder,
    heldout: list[str],
    ev: tuple[list[str], np.ndarray],
    out_dir: Path,
    *,
    calibration_texts: list[str],
) -> dict[str, Any]:
    """`calibration_texts`: training texts for the static int8 variant's activation ranges."""
    model = model.eval()
    run_dir = job.run_dir
    torch_metrics = run_eval(model, job, ev, job.train.matryoshka_dims)
    fp32 = export_onnx(model, run_dir / "model.fp32.onnx")
    batches = parity_batches(heldout, job.train.max_tokens, job.export.parity_texts, job.train.seed)
    max_diff = parity(model, fp32, batches)
    if max_diff > 1e-4:
        raise RuntimeError(f"ONNX parity failed: max abs diff {max_diff:.2e} > 1e-4")
    calibration = parity_batches(calibration_texts, job.train.max_tokens, 1024, job.train.seed)
    variants = build_variants(job, fp32, calibration)
    chosen = measure_and_choose(job, variants, ev, batches)
    report = {
        "parameters": count_parameters(model),
        "macs_per_token": macs_per_token(model.cfg),
        "torch_metrics": torch_metrics,
        "parity_max_abs_diff": max_diff,
        "variants": variants_report(variants),
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
            "teacher_precision": _teacher_precision(job),
            "variant": chosen,
        },
        metrics={**{k: round(float(v), 4) for k, v in q.items()}, "parity_max_abs_diff": max_diff},
        onnx_file=Path(variants[chosen]["path"]),
        matryoshka_dims=job.train.matryoshka_dims,
        quantize_explain=(
            (lambda src, dst: quantize_pointwise_int8(src, dst, calibration))
            if chosen == "int8-pointwise"
            else None
        ),
    )
    print(json.dumps(report, indent=2))
    return report


def acceptable_variants(variants: dict[str, dict[str, Any]]) -> list[str]:
    """The measured variants within the quality and batch-independence bounds of fp32 (fp32 included)."""
    ref = variants["fp32"]["quality"]

    def acceptable(v: dict[str, Any]) -> bool:
        q = v["quality"]
        return (
            ref["stsb_dev_spearman"] - q["stsb_dev_spearman"] <= INT8_MAX_DROP
            and ref["agreement_spearman"] - q["agreement_spearman"] <= INT8_MAX_AGREEMENT_DROP
            and v["batch_independence_max_abs_diff"] <= BATCH_INDEPENDENCE_TOL
        )

    return [name for name, v in variants.items() if name == "fp32" or acceptable(v)]


def _choose(variants: dict[str, dict[str, Any]]) -> str:
    """The fastest variant within the quality and batch-independence bounds of fp32, or int8-pointwise
    if it is within those bounds and at least PREFER_POINTWISE_WITHIN as fast as that one."""
    ok = acceptable_variants(variants)
    speed = {name: float(variants[name]["items_per_s"]) for name in ok}
    fastest = max(ok, key=speed.__getitem__)
    if "int8-pointwise" in speed and speed["int8-pointwise"] >= PREFER_POINTWISE_WITHIN * speed[fastest]:
        return "int8-pointwise"
    return fastest


def batch_independence(path: Path, batches: list[Batch]) -> float:
    """Max abs diff between each text embedded in its padded batch and embedded alone."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for ids, mask in batches[:2]:
        batched = sess.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})[0]
        for row in range(len(ids)):
            n = int(mask[row].sum())
            alone = sess.run(
                ["embeddings"],
                {"input_ids": ids[row : row + 1, :n], "attention_mask": mask[row : row + 1, :n]},
            )[0]
            worst = max(worst, float(np.abs(alone[0] - batched[row]).max()))
    return worst


def _teacher_precision(job: JobConfig) -> dict[str, Any]:
    """The precision and backend of the last run that computed pooled targets, and the CPU flags that
    chose them (lines written before `stage` existed were all pooled-target runs). The store is
    content-addressed, so targets may come from several runs: `runs` counts the runs logged."""
    path = Path(job.work_dir) / "teacher" / "precision.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    runs = [json.loads(line) for line in lines if line.strip()]
    pooled = [r for r in runs if r.get("stage", "targets") == "targets"]
    if not pooled:
        return {"precision": "unknown (targets computed by an earlier run)"}
    return {**pooled[-1], "runs": len(pooled)}
