"""From raw measurements (results.json) to the derived figures the report shows.

Every number in the report is computed here from the raw per-round values, so anyone can recompute it
from results.json (the benchmark test does). Throughput cells: median and max over rounds; "best" = the
concurrency with the highest median; ratios and efficiencies are ratios of medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.models import CNN, TEACHER

REFERENCES = ("minilm-fp32", "minilm-int8")
HEADLINE_SEQ_LEN = 32
TARGETS = {
    "model_only_ratio": 100.0,
    "grpc_items_per_s": 5000.0,
    "efficiency": 0.8,
}


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(statistics.median(values)), "max": float(max(values)), "min": float(min(values))}


def best_cell(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sweep cell (concurrency) with the highest median throughput, with its stats."""
    best = max(cells, key=lambda c: statistics.median(c["rounds"]))
    return {"concurrency": best["concurrency"], **stats(best["rounds"])}


def headline_cell(results: dict[str, Any]) -> tuple[int, int]:
    """Mode (a)'s headline cell: the largest batch at 32 tokens (PERF_NOTES' reference shape)."""
    return max(results["config"]["grid_batches"]), HEADLINE_SEQ_LEN


def _model_only(cells: Sequence[dict[str, Any]], cell: tuple[int, int]) -> dict[str, float]:
    match = [c for c in cells if (c["batch"], c["seq_len"]) == cell]
    return stats(match[0]["rounds"])


def _median_of(runs: Sequence[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def per_model(results: dict[str, Any], key: str) -> dict[str, Any]:
    """One model's derived figures: (a) headline, (b) best, (c) best, efficiency, CPU per item."""
    inproc = best_cell(results["in_process"][key])
    grpc = best_cell(results["grpc_closed"][key])
    runs_b = next(c for c in results["in_process"][key] if c["concurrency"] == inproc["concurrency"])["runs"]
    runs_c = next(c for c in results["grpc_closed"][key] if c["concurrency"] == grpc["concurrency"])["runs"]
    cpu_b, cpu_c = _median_of(runs_b, "cpu_ms_per_item"), _median_of(runs_c, "cpu_ms_per_item")
    return {
        "model_only": _model_only(results["model_only"][key], headline_cell(results)),
        "in_process": inproc,
        "grpc": grpc,
        "efficiency": grpc["median"] / inproc["median"],
        "in_process_cpu_ms_per_item": cpu_b,
        "server_cpu_ms_per_item": cpu_c,
        "cpu_efficiency": cpu_b / cpu_c,
    }


def ratios(results: dict[str, Any], models: dict[str, Any]) -> dict[str, dict[str, float]]:
    """CNN ÷ reference throughput (medians) per mode, for each MiniLM reference that was run."""
    out: dict[str, dict[str, float]] = {}
    if CNN not in models:
        return out
    cnn = models[CNN]
    for ref in REFERENCES:
        if ref in models:
            out[ref] = {
                mode: cnn[mode]["median"] / models[ref][mode]["median"]
                for mode in ("model_only", "in_process", "grpc")
            }
    return out


def targets(models: dict[str, Any], ratio: dict[str, dict[str, float]], quality: dict[str, Any]) -> list[Any]:
    """[(name, value text, target text, holds)] for the issue's targets; holds None = not measurable."""
    rows: list[Any] = []
    cnn = models.get(CNN)
    fp32 = ratio.get(TEACHER, {})
    r = fp32.get("model_only")
    rows.append(("model-only CNN ÷ MiniLM fp32", r, ">= 100x", None if r is None else r >= 100.0))
    g = cnn["grpc"]["median"] if cnn else None
    rows.append(("end-to-end CNN items/s", g, ">= 5,000", None if g is None else g >= 5000.0))
    e = cnn["efficiency"] if cnn else None
    rows.append(("CNN serving efficiency (c)÷(b)", e, ">= 0.8", None if e is None else e >= 0.8))
    for metric, name in (("stsb_dev_spearman", "STS-B dev"), ("agreement_spearman", "teacher agreement")):
        c, p = quality.get(CNN, {}).get(metric), quality.get("model2vec", {}).get(metric)
        holds = None if c is None or p is None else c > p
        rows.append(
            (f"CNN beats model2vec on {name}", c, f"> {p:.2f}" if p is not None else "> model2vec", holds)
        )
    return rows


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """Everything the report shows that is not a raw measurement."""
    models = {key: per_model(results, key) for key in results["models"]}
    ratio = ratios(results, models)
    return {"models": models, "ratios": ratio, "targets": targets(models, ratio, results["quality"])}
