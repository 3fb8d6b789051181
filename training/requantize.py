"""Re-run the job's int8 variant choice for an fp32 bundle on this machine, without retraining.

The job ships the fastest variant within the quality bounds (training/publish.py; int8-pointwise when it
is within 10% of the fastest), timed on the machine that trained it. Bundles exported before that
preference did not travel: on an AVX-512 VNNI CPU static int8 pointwise convolutions are 14-21% faster
than fp32, on an AVX2-only one about as fast, where the job kept fp32. This
command takes a bundle whose model.onnx is fp32 (the bundle keeps the graph the job exported, so no
checkpoint is needed), builds the int8 variants from it with the job's calibration texts, measures them
here exactly as `publish` does, and if another variant wins, rewrites the bundle with it: model.onnx,
for int8-pointwise explain.onnx quantised with the same calibration (Explain keeps matching what is
served), the chosen variant's quality in `metrics`, a new version, and a `requantized` record (CPU flags,
each variant's speed and STS-B dev, the version it came from) in `source`.

    git archive 899553d models/streamrec-cnn-v2 | tar -x -C /tmp     # v2.1 as exported: 2.1.0, fp32
    python -m training.requantize --config training/configs/cnn5m-v2.toml \
        --bundle /tmp/models/streamrec-cnn-v2 --out-dir /tmp/v2.1.1   # what made 2.1.1

(The committed default is already int8-pointwise, so it is refused as a starting point.)

Needs the corpus stage (`--stop-after corpus`, < 1 min; it runs it if absent) and the teacher's targets for
the held-out eval sample (10,000 texts; computed if absent, in the config's teacher precision).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from embedder.core.bundle import MANIFEST_FILE, Bundle, BundleError, load_bundle, save_bundle
from training.config import JobConfig, load_job_config
from training.export import git_commit
from training.model import changed_model_fields
from training.publish import (
    VARIANTS,
    acceptable_variants,
    build_variants,
    measure_and_choose,
    parity_batches,
    variants_report,
)
from training.quantize import quantize_pointwise_int8
from training.stages import eval_sample, setup_dist, stage_corpus, stage_teacher
from training.teacher import reported_cpu_flags

# Explain's embeddings against the served model.onnx: both quantised with the same calibration, so they
# agree to int8 rounding (measured: > 0.9999), far above a checkpoint of another model (publish uses 0.99).
EXPLAIN_MIN_COSINE = 0.999


def next_version(version: str) -> str:
    """The patch release after `version` ("2.1.0" -> "2.1.1"): same weights, other arithmetic."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"version {version!r} is not MAJOR.MINOR.PATCH; pass --version")
    major, minor, patch = parts
    return f"{major}.{minor}.{int(patch) + 1}"


def check_bundle(bundle: Bundle, job: JobConfig) -> None:
    """Refuse (SystemExit, one line) a bundle that is not fp32 or not of the config's model shape."""
    source = bundle.manifest.source
    variant = source.get("variant")
    if variant != "fp32":
        raise SystemExit(f"{bundle.path}: variant {variant!r}; requantize starts from an fp32 bundle")
    saved = source.get("config", {}).get("model")
    if saved is None:
        raise SystemExit(f"{bundle.path}: its manifest records no [model] config to check against")
    if changed := changed_model_fields(saved, job.model):
        fields = ", ".join(changed)
        raise SystemExit(f"{bundle.path}: another model than {job.name}'s ([model] {fields} differ)")


def explain_cosine(model_path: Path, explain_path: Path) -> float:
    """Lowest cosine between the two graphs' embeddings over random ids of mixed lengths."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 29000, (16, 40)).astype(np.int64)
    mask = (np.arange(40)[None, :] < rng.integers(3, 41, (16, 1))).astype(np.int64)
    feeds = {"input_ids": ids * mask, "attention_mask": mask}
    served = ort.InferenceSession(str(model_path)).run(["embeddings"], feeds)[0]
    mine = ort.InferenceSession(str(explain_path)).run(["embeddings"], feeds)[0]
    cos = (served * mine).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(mine, axis=1))
    return float(cos.min())


def requantize(
    job: JobConfig, bundle: Bundle, out_dir: Path, version: str, variant: str = ""
) -> dict[str, Any]:
    """Measure the variants of `bundle`'s fp32 graph here; write the winner (or `variant`, if it is
    within the quality bounds) to `out_dir` unless it is fp32."""
    d = setup_dist()
    train_records, heldout = stage_corpus(job, d)
    ev_texts = [r["text"] for r in eval_sample(job, heldout)]
    targets = stage_teacher(job, {"heldout": ev_texts}, d, [("heldout", ev_texts)])
    ev = (ev_texts, targets["heldout"])
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    fp32 = run_dir / "model.fp32.onnx"
    shutil.copyfile(bundle.model_path, fp32)
    max_tokens, seed = job.train.max_tokens, job.train.seed
    train_texts = [r["text"] for r in train_records]
    if job.train.max_train_texts:  # the job's own calibration texts: the first 4,096 of what it trains on
        train_texts = train_texts[: job.train.max_train_texts]
    calibration = parity_batches(train_texts[:4096], max_tokens, 1024, seed)
    batches = parity_batches([r["text"] for r in heldout], max_tokens, job.export.parity_texts, seed)
    variants = build_variants(job, fp32, calibration)
    job_choice = measure_and_choose(job, variants, ev, batches)
    chosen = variant or job_choice
    if chosen not in acceptable_variants(variants):
        raise SystemExit(
            f"{chosen} is outside the quality bounds of fp32 here: {variants[chosen]['quality']}"
        )
    report: dict[str, Any] = {
        "bundle": str(bundle.path),
        "from_version": bundle.manifest.version,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpu_flags": reported_cpu_flags(),
        "git_commit": git_commit(),
        "variants": variants_report(variants),
        "fastest": max(acceptable_variants(variants), key=lambda k: variants[k]["items_per_s"]),
        "job_choice": job_choice,
        "chosen": chosen,
    }
    (run_dir / "requantize.json").write_text(json.dumps(report, indent=2))
    if chosen == "fp32":
        return report
    explain = None
    if bundle.explain_path is not None:
        explain = bundle.explain_path
        if chosen == "int8-pointwise":
            explain = quantize_pointwise_int8(explain, run_dir / "explain.int8-pointwise.onnx", calibration)
            worst = explain_cosine(Path(variants[chosen]["path"]), explain)
            if worst < EXPLAIN_MIN_COSINE:
                raise RuntimeError(f"quantised explain.onnx drifts from model.onnx: min cosine {worst:.5f}")
    fields = bundle.manifest.writer_fields()
    old_metrics = fields["metrics"]
    quality = variants[chosen]["quality"]
    fields["version"] = version
    fields["metrics"] = {
        **{k: round(float(v), 4) for k, v in quality.items()},
        "parity_max_abs_diff": old_metrics.get("parity_max_abs_diff", 0.0),
    }
    summary = {k: v for k, v in report.items() if k not in ("bundle", "variants")}
    summary["variants"] = {
        name: {
            "items_per_s": round(v["items_per_s"]),
            "stsb_dev_spearman": round(v["quality"]["stsb_dev_spearman"], 4),
        }
        for name, v in variants.items()
    }
    fields["source"] = {**fields["source"], "variant": chosen, "requantized": summary}
    _replace_bundle(
        out_dir,
        lambda staging: save_bundle(
            staging, variants[chosen]["path"], bundle.tokenizer_path, explain_file=explain, **fields
        ),
    )
    return report


def _replace_bundle(out_dir: Path, write: Callable[[Path], Any]) -> None:
    """`write(staging)` a complete bundle beside `out_dir`, then swap it in: the old bundle (if any) is
    moved aside and deleted last, so a failure at any step leaves a whole bundle at `out_dir` or beside
    it."""
    staging = out_dir.with_name(out_dir.name + ".requantize-new")
    old = out_dir.with_name(out_dir.name + ".requantize-old")
    for leftover in (staging, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    write(staging)
    if out_dir.exists():
        out_dir.rename(old)
    staging.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)


def check_out_dir(out_dir: Path, bundle: Bundle) -> Path:
    """The resolved output directory; refuse (one line) an existing one that is not a bundle: it would be
    replaced whole."""
    out = out_dir.resolve()
    if out.exists() and out != bundle.path.resolve() and not (out / MANIFEST_FILE).is_file():
        raise SystemExit(
            f"--out-dir {out_dir}: exists and is not a bundle (no {MANIFEST_FILE}); pick another"
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the training config the bundle was made with")
    parser.add_argument("--bundle", required=True, type=Path, help="an fp32 bundle")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write (default: --bundle)")
    parser.add_argument("--version", default="", help="the new bundle's version (default: next patch)")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="",
        help="ship this variant if it is within the quality bounds, whatever its speed here (for a fleet "
        "of other CPUs; default: as the job chooses here)",
    )
    parser.add_argument("--work-dir", default=None, help="cache/run directory (default: the config's)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value"
    )
    args = parser.parse_args(argv)
    job = load_job_config(args.config, args.set)
    job.run_name = "requantize"
    job.export.int8 = True  # the variants are the point, whatever the config says
    if args.work_dir:
        job.work_dir = args.work_dir
    try:
        bundle = load_bundle(args.bundle)
        check_bundle(bundle, job)
        version = args.version or next_version(bundle.manifest.version)
    except (BundleError, TypeError, ValueError) as exc:  # a bad bundle, a saved config, a version
        raise SystemExit(f"{args.bundle}: {exc}") from None
    out_dir = check_out_dir(args.out_dir or args.bundle, bundle)
    report = requantize(job, bundle, out_dir, version, args.variant)
    for name, v in report["variants"].items():
        q, drift = v["quality"], v["batch_independence_max_abs_diff"]
        print(
            f"{name:15s} {v['items_per_s']:9,.0f} items/s  STS-B dev {q['stsb_dev_spearman']:.4f}  "
            f"agreement {q['agreement_spearman']:.4f}  batch independence {drift:.1e}"
        )
    flags = ", ".join(report["cpu_flags"])
    if report["chosen"] == "fp32":
        why = "asked for" if args.variant else f"the job's choice on this CPU: {flags}"
        print(f"fp32 stays ({why}); bundle unchanged")
    else:
        print(f"{out_dir}: {report['chosen']}, version {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
