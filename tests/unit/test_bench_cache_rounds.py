"""`streamrec-bench cache` rounds: a cell's interleaved runs averaged into one, and the report naming them."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.cache_bench import _averaged, markdown


def run(items_per_s: float, hit: float | None, rss: float) -> dict[str, Any]:
    return {
        "items_per_s": items_per_s,
        "requests_per_s": items_per_s / 32,
        "cpu_ms_per_item": 0.2,
        "client_cpu_ms_per_item": None,
        "hit_ratio": hit,
        "p50_ms": items_per_s / 100,
        "peak_rss_mb": rss,
        "cache": {"bytes": 2**20},
    }


def test_rounds_are_averaged_rss_is_the_peak_and_the_report_lists_each_pair() -> None:
    on = _averaged([run(20_000, 0.9, 400), run(30_000, 0.8, 350)])
    off = _averaged([run(8_000, None, 300), run(6_000, None, 320)])
    assert on["items_per_s"] == 25_000 and on["items_per_s_rounds"] == [20_000, 30_000]
    assert on["hit_ratio"] == pytest.approx(0.85) and on["peak_rss_mb"] == 400
    assert on["p50_ms"] == 300  # not averaged: the last round's
    assert off["hit_ratio"] is None and off["client_cpu_ms_per_item"] is None
    report = {
        "callers": 64,
        "zipf_s": 1.1,
        "distinct_items": 100_000,
        "warm_requests": 3000,
        "rounds": 2,
        "environment": {"cpu_model": "x", "cpu_flags": ["avx2"]},
        "cells": {"zipf": {"off": off, "on": on, "speedup": 25_000 / 7_000}},
    }
    text = markdown(report)
    assert "2 interleaved round(s)" in text
    assert "- zipf: with ÷ without the cache = 3.57x (rounds: 2.50x, 5.00x)" in text
