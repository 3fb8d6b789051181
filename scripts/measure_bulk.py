"""Bulk embedding throughput of one bundle: items per CPU-second (robust on a shared machine) and items/s.

    python scripts/measure_bulk.py models/streamrec-cnn-v2 --workers 1 [--items 20000] [--rounds 3]

Embeds item-like texts (20-40 words, the serving benchmark's `item_texts`) with `embed-file`'s
in-process path, `rounds` times, timing only the embedding (not start-up). Prints JSON with the medians.
docs/scale-out.md's capacity figures come from this and `streamrec-bench serving`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.loadgen import item_texts
from embedder.bulk.job import BulkOptions, LocalEmbedder, embed_file
from embedder.config import load_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--workers", type=int, default=1, help="ONNX sessions (1 = items per core)")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        catalogue = Path(tmp) / "catalogue.jsonl"
        rows = (json.dumps({"id": i, "text": t}) for i, t in enumerate(item_texts(args.items, seed=7)))
        catalogue.write_text("\n".join(rows) + "\n")
        options = BulkOptions()
        config = load_config({"bundle": args.bundle, "workers": args.workers}, env={})
        embedder = LocalEmbedder(config, options)
        runs = []
        try:
            for _ in range(args.rounds):
                cpu, wall = time.process_time(), time.monotonic()
                report = embed_file(
                    catalogue, Path(tmp) / "e.npy", embedder, options, restart=True, progress=False
                )
                cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                runs.append({"items_per_cpu_s": report.rows / cpu, "items_per_s": report.rows / wall})
        finally:
            embedder.close()
    summary = {
        "bundle": args.bundle,
        "workers": args.workers,
        "items": args.items,
        "median_items_per_cpu_s": round(statistics.median(r["items_per_cpu_s"] for r in runs)),
        "median_items_per_s": round(statistics.median(r["items_per_s"] for r in runs)),
        "load_avg_at_end": os.getloadavg(),
        "runs": runs,
    }
    json.dump(summary, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
