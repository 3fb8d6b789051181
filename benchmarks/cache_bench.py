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
from benchmarks.loadgen import Window, closed_loop, connections_for, send_each_once
from benchmarks.serving import rss_sampler, server_process

ZIPF_S = 1.1
# Requests of the stream a server answers before the window (not measured): a cache is judged as a server
# that has been up a while has it, not empty. A fixed count, not a time: how warm the cache gets in a
# timed warm-up would depend on the machine's speed. 3,000 x 32 = 96,000 draws, about the catalogue's size.
WARM_REQUESTS = 3000
# Off/on pairs per stream, in ABBA order (off, on, on, off, ...): on this shared 2-core machine the same
# uncached cell moves 20-40% between runs minutes apart, so one off cell against one on cell measures the
# drift as much as the cache (no repeats, 2026-12-04: on/off 0.89, 0.95 and 1.09 in three pairs).
ROUNDS = 2
# Per-cell figures averaged over the rounds; the rest (latency quantiles, counters) are the last round's.
_AVERAGED = ("items_per_s", "requests_per_s", "cpu_ms_per_item", "client_cpu_ms_per_item", "hit_ratio")


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
            # Summed over the server's processes (one series each, `process` label) when it has several.
            values = [s.value for s in family.samples if s.name in (family.name, family.name + "_total")]
            out[family.name.removeprefix("streamrec_embedder_cache_")] = sum(values)
    return out


def _cell(
    bundle: Path,
    requests: list[list[str]],
    callers: int,
    window: Window,
    *,
    cache_mb: float,
    warm: int,
    rpc: str = "unary",
    processes: int = 1,
    connections: int = 1,
) -> dict[str, Any]:
    """One fresh server: the stream's first `warm` requests sent once (not measured), then the rest
    measured (`rpc`: unary calls, or one EmbedStream per caller); the hit ratio is the closed loop's (its
    own warm-up second and window), not the warm-up requests' (counters read before and after the loop)."""
    port = _free_port()
    metrics = f"http://127.0.0.1:{port}/metrics"
    with (
        server_process(bundle, embedding_cache_mb=cache_mb, metrics_port=port, processes=processes) as server,
        rss_sampler(server),
    ):
        warm_errors = send_each_once(server.address, requests[:warm], callers, connections) if warm else 0
        if warm_errors:  # a cell measured from a colder cache than it says would mislead
            raise RuntimeError(f"{warm_errors} of {warm} warm-up requests failed")
        before = _cache_counts(metrics)
        result = closed_loop(
            server.address,
            requests[warm:],
            callers,
            window,
            cpu_pid=server.proc.pid,
            rpc=rpc,
            connections=connections,
        ).to_dict()
        counts = _cache_counts(metrics)
        peak = server.peak_rss_mb
    result.pop("quantiles_ms")
    hits, misses = (counts.get(k, 0.0) - before.get(k, 0.0) for k in ("hits", "misses"))
    return {
        **result,
        "cache_mb": cache_mb,
        "rpc": rpc,
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
    rounds: int = ROUNDS,
    processes: int = 1,
    connections: int = 0,
) -> dict[str, Any]:
    """Both streams, each without and with the cache (one fresh server per cell), measured after the
    stream's first `warm_requests` requests (0 = from an empty cache), with unary calls; then the Zipf
    stream again with each caller sending on one EmbedStream ("zipf-stream"): the same concurrency
    without gRPC's per-call cost, which cached requests otherwise spend most of their time in.
    `processes`: the server's (`serve --processes`); `connections`: how many the callers share (0 =
    `loadgen.connections_for`)."""
    connections = connections or connections_for(processes, callers)
    items = catalogue(distinct)
    # Enough texts that a stream does not wrap round within a cell below ~20k items/s (warm-up included).
    n = 32 * warm_requests + min(400_000, int(20_000 * (4 * seconds + 2)))
    streams = {"zipf": zipf_stream(items, n), "unique": unique_stream(items, n)}
    window = Window(seconds, warmup_s=1.0, min_requests=20, max_seconds=4 * seconds)
    cells: dict[str, dict[str, Any]] = {}
    for name, texts, rpc in (
        ("zipf", streams["zipf"], "unary"),
        ("unique", streams["unique"], "unary"),
        ("zipf-stream", streams["zipf"], "stream"),
    ):
        requests = requests_of(texts, 32)
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for r in range(rounds):
            for state in ("off", "on") if r % 2 == 0 else ("on", "off"):
                mb = cache_mb if state == "on" else 0.0
                runs[state].append(
                    _cell(
                        bundle,
                        requests,
                        callers,
                        window,
                        cache_mb=mb,
                        warm=warm_requests,
                        rpc=rpc,
                        processes=processes,
                        connections=connections,
                    )
                )
        off, on = _averaged(runs["off"]), _averaged(runs["on"])
        cells[name] = {"off": off, "on": on, "speedup": on["items_per_s"] / off["items_per_s"]}
    return {
        "environment": environment.describe(),
        "distinct_items": distinct,
        "zipf_s": ZIPF_S,
        "callers": callers,
        "warm_requests": warm_requests,
        "rounds": rounds,
        "processes": processes,
        "connections": connections,
        "cells": cells,
    }


def _averaged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell's rounds as one: `_AVERAGED` figures averaged (each round's items/s kept), counts summed,
    peak RSS the highest, everything else the last round's."""
    out = {**runs[-1], "items_per_s_rounds": [c["items_per_s"] for c in runs]}
    for key in _AVERAGED:
        values = [c[key] for c in runs if c[key] is not None]
        out[key] = sum(values) / len(values) if values else None
    out["peak_rss_mb"] = max(c["peak_rss_mb"] for c in runs)
    for key in ("errors", "requests", "items", "warm_errors"):  # counts: over every round
        out[key] = sum(c.get(key, 0) for c in runs)
    return out


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        f"{report['callers']} callers; Zipf s={report['zipf_s']} over {report['distinct_items']:,} items; "
        f"measured after {report.get('warm_requests', 0):,} requests of each stream; "
        f"{report.get('rounds', 1)} interleaved round(s) per cell, averaged. "
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
        per_round = ""
        if len(cell["on"].get("items_per_s_rounds", [])) > 1:
            pairs = zip(cell["on"]["items_per_s_rounds"], cell["off"]["items_per_s_rounds"], strict=True)
            per_round = " (rounds: " + ", ".join(f"{a / b:.2f}x" if b else "n/a" for a, b in pairs) + ")"
        lines.append(f"- {name}: with ÷ without the cache = {cell['speedup']:.2f}x{per_round}")
    return "\n".join(lines)
