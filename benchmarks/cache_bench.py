"""`streamrec-bench cache`: what the embedding cache buys and costs, end to end over gRPC.

Two streams of 32-text requests of catalogue items, each against a server without the cache and one
with it (`--cache-mb`), same callers, same machine, interleaved:
- `zipf`: item i drawn with probability ~ 1 / i^s (s = 1.1) over `distinct` items, as a recommender
  re-embeds popular items: the cache's gain, with the hit ratio and the memory it took;
- `unique`: every text new (a serial number appended), the cache's cost when nothing repeats.
The items are every Debian catalogue item of 20-40 words on the machine (benchmarks/inputs.py; speed
only, so not just the held-out ones); past their number (~30,000), copies tagged "(edition k)" make up
`distinct`. Each cell is measured after the stream's first `WARM_REQUESTS` requests (sent once, not
measured: a cache as a server that has been up a while has it). Reported: items/s and server CPU ms per
item per cell, their ratios, the measured loop's hit ratio and the cache's bytes from the server's
/metrics, and the server's peak RSS.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import environment
from benchmarks.inputs import APT_LISTS, item_texts, requests_of
from benchmarks.loadgen import Window, closed_loop, send_each_once
from benchmarks.serving import rss_sampler, server_process

ZIPF_S = 1.1
# Requests of the stream a server answers before the window (not measured): a cache is judged as a server
# that has been up a while has it, not empty. A fixed count, not a time: how warm the cache gets in a
# timed warm-up would depend on the machine's speed. 3,000 x 32 = 96,000 draws, about the catalogue's size.
WARM_REQUESTS = 3000


def catalogue(distinct: int, apt_lists: Path = APT_LISTS) -> list[str]:
    """`distinct` item texts: the machine's Debian items, then tagged copies of them."""
    base = item_texts(apt_lists, heldout_only=False)
    return [
        base[i % len(base)] + ("" if i < len(base) else f" (edition {i // len(base)})")
        for i in range(distinct)
    ]


def zipf_stream(items: list[str], n: int, seed: int = 0, s: float = ZIPF_S) -> list[str]:
    """`n` draws from `items` with P(rank k) ~ 1 / k^s (rank = position in a seeded shuffle)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(items) + 1) ** s
    order = rng.permutation(len(items))
    return [items[order[k]] for k in rng.choice(len(items), size=n, p=weights / weights.sum())]


def unique_stream(items: list[str], n: int) -> list[str]:
    """`n` texts that never repeat: items with a serial number appended."""
    return [f"{items[i % len(items)]} #{i}" for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cache_counts(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("streamrec_embedder_cache_"):
            out[family.name.removeprefix("streamrec_embedder_cache_")] = family.samples[0].value
    return out


def _cell(
    bundle: Path, requests: list[list[str]], callers: int, window: Window, *, cache_mb: float, warm: int
) -> dict[str, Any]:
    """One fresh server: the stream's first `warm` requests sent once (not measured), then the rest
    measured; the hit ratio is the closed loop's (its own warm-up second and window), not the warm-up
    requests' (counters read before and after the loop)."""
    port = _free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    with (
        server_process(bundle, embedding_cache_mb=cache_mb, metrics_port=port) as server,
        rss_sampler(server),
    ):
        warm_errors = send_each_once(server.address, requests[:warm], callers) if warm else 0
        if warm_errors:  # a cell measured from a colder cache than it says would mislead
            raise RuntimeError(f"{warm_errors} of {warm} warm-up requests failed")
        before = _cache_counts(metrics)
        result = closed_loop(
            server.address, requests[warm:], callers, window, cpu_pid=server.proc.pid
        ).to_dict()
        counts = _cache_counts(metrics)
        peak = server.peak_rss_mb
    result.pop("quantiles_ms")
    hits, misses = (counts.get(k, 0.0) - before.get(k, 0.0) for k in ("hits", "misses"))
    return {
        **result,
        "cache_mb": cache_mb,
        "warm_requests": warm,
        "warm_errors": warm_errors,
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "cache": counts,
        "peak_rss_mb": peak,
    }


def run_cache_bench(
    bundle: Path,
    *,
    callers: int = 64,
    seconds: float = 5.0,
    distinct: int = 100_000,
    cache_mb: float = 256.0,
    warm_requests: int = WARM_REQUESTS,
) -> dict[str, Any]:
    """Both streams, each without and with the cache (one fresh server per cell), measured after the
    stream's first `warm_requests` requests (0 = from an empty cache)."""
    items = catalogue(distinct)
    # Enough texts that a stream does not wrap round within a cell below ~20k items/s (warm-up included).
    n = 32 * warm_requests + min(400_000, int(20_000 * (4 * seconds + 2)))
    streams = {"zipf": zipf_stream(items, n), "unique": unique_stream(items, n)}
    window = Window(seconds, warmup_s=1.0, min_requests=20, max_seconds=4 * seconds)
    cells: dict[str, dict[str, Any]] = {}
    for name, texts in streams.items():
        requests = requests_of(texts, 32)
        off = _cell(bundle, requests, callers, window, cache_mb=0.0, warm=warm_requests)
        on = _cell(bundle, requests, callers, window, cache_mb=cache_mb, warm=warm_requests)
        cells[name] = {"off": off, "on": on, "speedup": on["items_per_s"] / off["items_per_s"]}
    return {
        "environment": environment.describe(),
        "distinct_items": distinct,
        "zipf_s": ZIPF_S,
        "callers": callers,
        "warm_requests": warm_requests,
        "cells": cells,
    }


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"{report['callers']} callers; Zipf s={report['zipf_s']} over {report['distinct_items']:,} items; "
        f"measured after {report.get('warm_requests', 0):,} requests of each stream. "
        f"CPU: {env['cpu_model']}, {', '.join(env['cpu_flags']) or 'no AVX flags'}.",
        "",
        "| stream | cache | items/s | server CPU ms/item | hit ratio | cache MiB | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cell in report["cells"].items():
        for state in ("off", "on"):
            c = cell[state]
            hit = "n/a" if c["hit_ratio"] is None else f"{c['hit_ratio']:.3f}"
            cpu = "n/a" if c["cpu_ms_per_item"] is None else f"{c['cpu_ms_per_item']:.4f}"
            mib = c["cache"].get("bytes", 0.0) / 2**20
            cols = (
                name,
                state,
                f"{c['items_per_s']:,.0f}",
                cpu,
                hit,
                f"{mib:.1f}",
                f"{c['peak_rss_mb']:.0f}",
            )
            lines.append("| " + " | ".join(cols) + " |")
    lines.append("")
    for name, cell in report["cells"].items():
        lines.append(f"- {name}: with ÷ without the cache = {cell['speedup']:.2f}x")
    return "\n".join(lines)
