"""The focused runs saved next to a full run: `overhead.json`, `cache.json`, `infinity.json`,
`mixed_attack.json` in its run directory (`streamrec-bench overhead|cache|infinity|mixed-attack --out
benchmarks/results/<run>/<name>.json`).

Their issue-14/15 figures go into the README snippet beside the suite's table, computed from the files,
so no hand-typed figure can drift from what was measured (tests/unit/test_committed_results.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.report import num, rate, ratio_text

FOCUSED = ("overhead", "cache", "infinity", "mixed_attack")


def load(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The focused runs present in `run_dir`, by name."""
    found = {}
    for name in FOCUSED:
        path = run_dir / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _inputs(report: dict[str, Any]) -> str:
    inputs = report.get("inputs")
    return f"set `{inputs['set']}`, " if inputs else ""


def _overhead(r: dict[str, Any]) -> list[str]:
    ratios, c, b = r["ratios"], r["c_server"], r["b_ideal_batches"]
    return [
        f"| runtime vs model (`overhead`, {_inputs(r)}{r['callers']} callers) | "
        f"server {rate(c['items_per_s'])} items/s; model alone on the same texts in sorted batches "
        f"{rate(b['items_per_s'])} | "
        f"{num(ratios['c_over_b'], '.2f')} of model-only (wanted >= 0.5); server CPU per item "
        f"{num(ratios['server_cpu_over_tokenizer_plus_b_cpu'], '.2f')}x tokenizer + model (wanted <= 2); "
        f"server batches {num(c['padding_efficiency'], '.2f')} real tokens |",
    ]


def _cache(r: dict[str, Any]) -> list[str]:
    zipf, unique = r["cells"]["zipf"], r["cells"]["unique"]
    return [
        f"| embedding cache (`cache`, {r['callers']} callers, Zipf {r['zipf_s']} over "
        f"{r['distinct_items']:,} items, after {r.get('warm_requests', 0):,} warm-up requests, "
        f"{r.get('rounds', 1)} interleaved round(s)) | Zipf: "
        f"{rate(zipf['on']['items_per_s'])} items/s cached vs "
        f"{rate(zipf['off']['items_per_s'])}, hit ratio {num(zipf['on']['hit_ratio'], '.2f')} | "
        f"{ratio_text(zipf['speedup'])} on Zipf (wanted >= 3x); no repeats: "
        f"{ratio_text(unique['speedup'])} (wanted >= 0.95x)" + _stream_cell(r) + " |",
    ]


def _stream_cell(r: dict[str, Any]) -> str:
    """The Zipf cells again over EmbedStream (one stream per caller), when the run has them."""
    cell = r["cells"].get("zipf-stream")
    if cell is None:
        return ""
    return (
        f"; Zipf over EmbedStream: {rate(cell['on']['items_per_s'])} vs "
        f"{rate(cell['off']['items_per_s'])} items/s, {ratio_text(cell['speedup'])}"
    )


def _infinity(r: dict[str, Any]) -> list[str]:
    models, ratios = r["models"], r["ratio_to_infinity"]
    return [
        f"| Infinity peer (`infinity`, {_inputs(r)}{r['callers']} callers, all-MiniLM-L6-v2, torch) | "
        f"Infinity {rate(models['infinity-minilm']['items_per_s_median'])} items/s; our server: MiniLM "
        f"{rate(models['ours-minilm-fp32']['items_per_s_median'])}, CNN "
        f"{rate(models['ours-cnn']['items_per_s_median'])} | our CNN server "
        f"{ratio_text(ratios['ours-cnn'])} Infinity; "
        f"our MiniLM server {ratio_text(ratios['ours-minilm-fp32'])} |",
    ]


def _mixed_attack(r: dict[str, Any]) -> list[str]:
    normal, rss, targets = r["under_attack"]["normal"], r["rss_mib"], r["targets"]
    health = r["under_attack"]["health"]["codes"]
    return [
        f"| mixed attack (`mixed-attack`, {num(r['seconds'], '.0f')} s: Watch flood + long-text flood + "
        f"normal keyed calls) | normal calls p99 {num(r['unloaded']['p99_ms'], '.1f')} ms unloaded, "
        f"{num(normal['p99_ms'], '.1f')} ms under attack; health SERVING {health.get('SERVING', 0):,} of "
        f"{sum(health.values()):,} | p99 {num(targets['normal_p99_ratio']['value'], '.2f')}x unloaded "
        f"(wanted <= 3x); RSS +{num(100 * rss['growth_net_of_cache'], '.0f')}% net of the cache "
        f"(+{num(100 * rss['growth'], '.0f')}% raw; wanted <= 20%) |",
    ]


ROWS = {"overhead": _overhead, "cache": _cache, "infinity": _infinity, "mixed_attack": _mixed_attack}


def _commit(report: dict[str, Any]) -> str:
    return str(report.get("environment", {}).get("git", {}).get("commit", ""))[:7]


def _later(run_dir: Path, found: dict[str, dict[str, Any]]) -> str:
    """ ", `cache` re-run at <commit>" for the focused runs made at another commit than the suite's."""
    path = run_dir / "results.json"
    suite = _commit(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else ""
    again = [
        f"`{name}` re-run at {_commit(r)}"
        for name, r in found.items()
        if suite and _commit(r) not in ("", suite)
    ]
    return "".join(", " + text for text in again)


def snippet_lines(run_dir: Path) -> list[str]:
    """The focused runs' table for the README ([] when none was saved with the run)."""
    found = load(run_dir)
    if not found:
        return []
    lines = [
        "Focused runs saved with it (same machine, one after another"
        + _later(run_dir, found)
        + "; [docs/benchmarks.md](docs/benchmarks.md) says how each is measured):",
        "",
        "| run | measured | against the issue's target |",
        "|---|---|---|",
    ]
    for name, report in found.items():
        lines += ROWS[name](report)
    return lines
