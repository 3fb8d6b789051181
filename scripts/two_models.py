"""Two models in one server (issue 13's target): RSS, and each model's throughput next to an idle other.

    python scripts/two_models.py [--cnn models/streamrec-cnn-v2] [--minilm DIR] [--rounds 3] [--seconds 10]

Starts three real servers on free loopback ports: the CNN alone, MiniLM alone, and both (`--bundle`
twice). It reports each server's RSS at its peak under load and once idle after the last round (each of
its models has served by then), and measures, in interleaved rounds (alone, both; the order flips each
round: the shared machine drifts), each model's closed-loop gRPC throughput (32-text requests of 20-40
words; every request names its model) while the other model, where loaded, is idle. The ratio
both/alone per model is the target: >= 0.9.
Without --minilm the MiniLM fp32 bundle is built into the benchmark cache (needs torch: `streamrec-bench
baselines`). Prints JSON; --out FILE also writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.loadgen import Window, batches, closed_loop, item_texts
from benchmarks.serving import ServerProcess, rss_sampler, server_process
from embedder.config import DEFAULT_BUNDLE
from embedder.core.bundle import load_bundle

# Callers per model: enough to fill the batches of each (MiniLM's batches take ~100x longer).
CALLERS = {"cnn": 32, "minilm": 8}


def _throughput(
    server: ServerProcess, model: str, kind: str, window: Window, texts: list[list[str]]
) -> float:
    with rss_sampler(server):
        r = closed_loop(server.address, texts, CALLERS[kind], window, cpu_pid=server.proc.pid, model=model)
    if r.errors:
        raise SystemExit(f"{r.errors} failed calls to {model}")
    return r.items_per_s


def measure(cnn: Path, minilm: Path, rounds: int, seconds: float) -> dict[str, Any]:
    paths = {"cnn": cnn, "minilm": minilm}
    names = {kind: load_bundle(p).manifest.name for kind, p in paths.items()}
    requests = batches(item_texts(32 * 64, seed=0), 32)
    window = Window(seconds, min_requests=20)
    rates: dict[str, dict[str, list[float]]] = {k: {"alone": [], "both": []} for k in paths}
    with contextlib.ExitStack() as stack:
        servers = {
            "cnn": stack.enter_context(server_process(cnn)),
            "minilm": stack.enter_context(server_process(minilm)),
            "both": stack.enter_context(server_process([cnn, minilm])),
        }
        for r in range(rounds):
            for kind in paths:
                order = ["alone", "both"] if r % 2 == 0 else ["both", "alone"]
                for where in order:
                    server = servers[kind if where == "alone" else "both"]
                    rates[kind][where].append(_throughput(server, names[kind], kind, window, requests))
            print(f"round {r + 1}/{rounds}: {json.dumps(rates)}", file=sys.stderr)
        rss = {
            k: {"after_mb": round(s.rss_mb(), 1), "peak_mb": round(s.peak_rss_mb, 1)}
            for k, s in servers.items()
        }
    summary = {}
    for kind, by in rates.items():
        alone, both = statistics.median(by["alone"]), statistics.median(by["both"])
        ratios = [b / a for a, b in zip(by["alone"], by["both"], strict=True)]
        summary[kind] = {
            "model": names[kind],
            "alone_items_per_s": round(alone, 1),
            "both_items_per_s": round(both, 1),
            "ratio_median_of_rounds": round(statistics.median(ratios), 3),
            "callers": CALLERS[kind],
        }
    return {
        "bundles": {k: str(p) for k, p in paths.items()},
        "rounds": rounds,
        "seconds": seconds,
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "rss": rss,
        "summary": summary,
        "per_round_items_per_s": rates,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cnn", default=DEFAULT_BUNDLE)
    parser.add_argument("--minilm", help="a MiniLM bundle (default: the benchmark cache's minilm-fp32)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    if args.minilm:
        minilm = Path(args.minilm)
    else:
        from benchmarks.baselines import ensure_baseline  # lazy: building needs torch

        minilm = ensure_baseline("minilm-fp32")
    report = measure(Path(args.cnn).resolve(), minilm.resolve(), args.rounds, args.seconds)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
