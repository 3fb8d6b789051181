"""The variant table: every model shape tried, its cost, speed against MiniLM, and its quality.

    python -m training.variants --bundle models/streamrec-cnn-v2 --bundle <other> ... --out docs/variants.md

Speed is model-only ONNX Runtime at batch 64 x 32 tokens, measured in one run, interleaved in rounds with
the MiniLM baselines (this VM is noisy: median and max over rounds), in two 2-core set-ups: one session
with 2 intra-op threads, and 2 processes x 1 thread (the serving default). Quality comes from each
bundle's manifest (computed by the training job on STS-B dev and held-out teacher agreement).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np

from embedder.core.bundle import load_bundle

BATCH, TOKENS = 64, 32


def _session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _feeds() -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(1000, 29000, (BATCH, TOKENS)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def _timed_runs(path: str, threads: int, seconds: float) -> float:
    sess, feeds = _session(path, threads), _feeds()
    for _ in range(2):
        sess.run(None, feeds)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, feeds)
        n += 1
    return n * BATCH / (time.perf_counter() - t0)


def _worker(path: str, seconds: float, out: Any) -> None:
    out.put(_timed_runs(path, 1, seconds))


def items_per_s(path: Path, mode: str, seconds: float) -> float:
    """`mode`: "1x2" (one session, 2 threads) or "2x1" (two processes, one thread each, summed)."""
    if mode == "1x2":
        return _timed_runs(str(path), 2, seconds)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(path), seconds, q)) for _ in range(2)]
    for p in procs:
        p.start()
    rates = [q.get(timeout=120 + seconds) for _ in procs]
    for p in procs:
        p.join()
    return float(sum(rates))


def measure(bundles: dict[str, Path], rounds: int, seconds: float) -> dict[str, dict[str, list[float]]]:
    raw: dict[str, dict[str, list[float]]] = {n: {"1x2": [], "2x1": []} for n in bundles}
    for r in range(rounds):
        for name, path in bundles.items():
            for mode in ("1x2", "2x1"):
                raw[name][mode].append(items_per_s(path / "model.onnx", mode, seconds))
        print(f"round {r + 1}/{rounds} done", flush=True)
    return raw


def table(bundles: dict[str, Path], raw: dict[str, dict[str, list[float]]], baseline: str) -> str:
    base = {m: float(np.median(raw[baseline][m])) for m in ("1x2", "2x1")}
    head = (
        "| variant | params | MACs/token | items/s 1x2 (median/max) | items/s 2x1 (median/max) "
        f"| ÷ {baseline} (1x2 / 2x1) | STS-B dev ×100 | agreement ρ | 10-NN overlap |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name, path in bundles.items():
        m = load_bundle(path).manifest
        macs = m.source.get("macs_per_token", "")
        med = {k: float(np.median(v)) for k, v in raw[name].items()}
        mx = {k: float(np.max(v)) for k, v in raw[name].items()}
        q = m.metrics
        rows.append(
            f"| {name} | {m.parameters / 1e6:.2f}M | {macs} | {med['1x2']:,.0f} / {mx['1x2']:,.0f} "
            f"| {med['2x1']:,.0f} / {mx['2x1']:,.0f} | {med['1x2'] / base['1x2']:.0f}x / "
            f"{med['2x1'] / base['2x1']:.0f}x | {_fmt(q.get('stsb_dev_spearman'))} "
            f"| {_fmt(q.get('agreement_spearman'), 3)} | {_fmt(q.get('knn10_overlap'), 3)} |"
        )
    return head + "\n".join(rows) + "\n"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", action="append", default=[], help="NAME=DIR or DIR (repeatable)")
    parser.add_argument("--baseline", default="minilm-fp32", help="name of the bundle the ratio is taken to")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", default=None, help="write the markdown table + raw JSON here")
    args = parser.parse_args(argv)
    from benchmarks.baselines import ensure_baseline

    bundles = {name: ensure_baseline(name) for name in ("minilm-fp32", "minilm-int8")}
    for spec in args.bundle:
        name, _, path = spec.rpartition("=")
        bundles[name or Path(path).name] = Path(path)
    raw = measure(bundles, args.rounds, args.seconds)
    md = table(bundles, raw, args.baseline)
    print(md)
    if args.out:
        Path(args.out).write_text(md, encoding="utf-8")
        Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
