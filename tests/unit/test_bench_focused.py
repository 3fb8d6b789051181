"""The README snippet's focused-runs table comes from the JSON files saved in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import focused

INPUTS = {"set": "items", "count": 1561}
OVERHEAD = {
    "inputs": INPUTS,
    "callers": 64,
    "c_server": {"items_per_s": 6000.0, "cpu_ms_per_item": 0.3, "padding_efficiency": 0.83},
    "b_ideal_batches": {"items_per_s": 10000.0, "cpu_ms_per_item": 0.1},
    "ratios": {"c_over_b": 0.6, "server_cpu_over_tokenizer_plus_b_cpu": 1.5},
}
CACHE = {
    "callers": 64,
    "zipf_s": 1.1,
    "distinct_items": 100000,
    "cells": {
        "zipf": {
            "on": {"items_per_s": 30000.0, "hit_ratio": 0.8},
            "off": {"items_per_s": 6000.0},
            "speedup": 5.0,
        },
        "unique": {"on": {"items_per_s": 5900.0}, "off": {"items_per_s": 6000.0}, "speedup": 0.983},
    },
}
INFINITY = {
    "inputs": INPUTS,
    "callers": 8,
    "models": {
        "infinity-minilm": {"items_per_s_median": 40.0},
        "ours-minilm-fp32": {"items_per_s_median": 44.0},
        "ours-cnn": {"items_per_s_median": 5000.0},
    },
    "ratio_to_infinity": {"infinity-minilm": 1.0, "ours-minilm-fp32": 1.1, "ours-cnn": 125.0},
}
MIXED_ATTACK = {
    "seconds": 60.0,
    "unloaded": {"codes": {"OK": 500}, "calls": 500, "p50_ms": 5.0, "p99_ms": 10.0},
    "under_attack": {
        "normal": {"codes": {"OK": 900}, "calls": 900, "p50_ms": 8.0, "p99_ms": 35.0},
        "health": {"codes": {"SERVING": 99, "UNAVAILABLE": 1}, "calls": 100},
    },
    "rss_mib": {"before": 300.0, "after": 366.0, "growth": 0.22, "growth_net_of_cache": 0.15},
    "targets": {"normal_p99_ratio": {"value": 3.5, "wanted": "<= 3.0", "holds": False}},
}


def test_no_focused_runs_add_nothing(tmp_path: Path) -> None:
    assert focused.snippet_lines(tmp_path) == []


def test_each_saved_run_adds_its_row_with_the_targets(tmp_path: Path) -> None:
    runs = (("overhead", OVERHEAD), ("cache", CACHE), ("infinity", INFINITY), ("mixed_attack", MIXED_ATTACK))
    for name, report in runs:
        (tmp_path / f"{name}.json").write_text(json.dumps(report), encoding="utf-8")
    rows = [line for line in focused.snippet_lines(tmp_path) if line.startswith("| ") and "---" not in line]
    assert len(rows) == 5  # header + one per run
    overhead, cache, infinity, attack = rows[1:]
    assert "0.60 of model-only (wanted >= 0.5)" in overhead and "1.50x tokenizer + model" in overhead
    assert "5.0x on Zipf" in cache and "hit ratio 0.80" in cache and "no repeats: 1.0x" in cache
    assert "Infinity 40 items/s" in infinity and "our CNN server 125.0x Infinity" in infinity
    assert "p99 10.0 ms unloaded, 35.0 ms under attack" in attack and "SERVING 99 of 100" in attack
    assert "p99 3.50x unloaded" in attack and "RSS +15% net of the cache (+22% raw" in attack
