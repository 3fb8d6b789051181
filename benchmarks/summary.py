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


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(statistics.median(values)), "max": float(max(values)), "min": float(min(values))}


def best_cell(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sweep cell (concurrency) with the highest median throughput, with its stats."""
    best = max(cells, key=lambda c: statistics.median(c["rounds"]))
    return {"concurrency": best["concurrency"], **stats(best["rounds"])}


def headline_cell(results: dict[str, Any]) -> tuple[int, int]:
    """Mode (a)'s headline cell: the largest batch at 32 tokens (docs/performance.md's reference shape)."""
    return max(results["config"]["grid_batches"]), HEADLINE_SEQ_LEN


def _model_only(cells: Sequence[dict[str, Any]], cell: tuple[int, int]) -> dict[str, float]:
    match = [c for c in cells if (c["batch"], c["seq_len"]) == cell]
    return stats(match[0]["rounds"])


def _median_of(runs: Sequence[dict[str, Any]], key: str) -> float | None:
    """Median over the runs that have the figure (a run that completed nothing has no CPU per item)."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(statistics.median(values)) if values else None


def per_model(results: dict[str, Any], key: str) -> dict[str, Any]:
    """One model's derived figures: (a) headline, (b) best, (c) best, efficiency, CPU per item."""
    inproc = best_cell(results["in_process"][key])
    grpc = best_cell(results["grpc_closed"][key])
    runs_b = next(c for c in results["in_process"][key] if c["concurrency"] == inproc["concurrency"])["runs"]
    runs_c = next(c for c in results["grpc_closed"][key] if c["concurrency"] == grpc["concurrency"])["runs"]
    cpu_b, cpu_c = _median_of(runs_b, "cpu_ms_per_item"), _median_of(runs_c, "cpu_ms_per_item")
    single, server = results["grpc_single"][key], results["servers"][key]
    return {
        "model_only": _model_only(results["model_only"][key], headline_cell(results)),
        "in_process": inproc,
        "grpc": grpc,
        "efficiency": _ratio(grpc["median"], inproc["median"]),
        "in_process_cpu_ms_per_item": cpu_b,
        "server_cpu_ms_per_item": cpu_c,
        "cpu_efficiency": _ratio(cpu_b, cpu_c),
        "single_p50_ms": single["p50_ms"],
        "single_p99_ms": single["p99_ms"],
        "peak_rss_mb": server["peak_rss_mb_under_load"],
        "start_to_serving_s": server["start_to_serving_s"],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is not positive (the report says n/a, never inf)."""
    return a / b if a is not None and b is not None and b > 0 else None


def ratios(results: dict[str, Any], models: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """CNN ÷ reference throughput (medians) per mode, for each MiniLM reference that was run."""
    out: dict[str, dict[str, float | None]] = {}
    if CNN not in models:
        return out
    cnn = models[CNN]
    for ref in REFERENCES:
        if ref in models:
            out[ref] = {
                mode: _ratio(cnn[mode]["median"], models[ref][mode]["median"])
                for mode in ("model_only", "in_process", "grpc")
            }
    return out


# (name, field of the CNN's derived figures, "min" or "max", bound): issues 3 and 5. Reported, not asserted.
CNN_TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("end-to-end CNN items/s (best callers)", "grpc_median", "min", 5000.0),
    ("CNN serving efficiency (c)÷(b)", "efficiency", "min", 0.8),
    ("CNN one caller, one text: p50 ms", "single_p50_ms", "max", 2.0),
    ("CNN one caller, one text: p99 ms", "single_p99_ms", "max", 10.0),
    ("CNN server peak RSS under load, MB", "peak_rss_mb", "max", 400.0),
    ("CNN server start to SERVING, s", "start_to_serving_s", "max", 3.0),
)


def _holds(value: float | None, kind: str, bound: float) -> bool | None:
    if value is None:
        return None
    return value >= bound if kind == "min" else value <= bound


def targets(
    models: dict[str, Any], ratio: dict[str, dict[str, float | None]], quality: dict[str, Any]
) -> list[Any]:
    """[(name, value, wanted, holds)] for the issues' targets; holds None = not measured in this run."""
    r = ratio.get(TEACHER, {}).get("model_only")
    rows: list[Any] = [("model-only CNN ÷ MiniLM fp32", r, ">= 100x", _holds(r, "min", 100.0))]
    cnn = models.get(CNN)
    fields = {**cnn, "grpc_median": cnn["grpc"]["median"]} if cnn else {}
    for name, field, kind, bound in CNN_TARGETS:
        value = fields.get(field)
        wanted = f"{'>=' if kind == 'min' else '<='} {bound:,g}"
        rows.append((name, value, wanted, _holds(value, kind, bound)))
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
