"""The report's PNG figures, drawn from results.json alone (matplotlib, Agg backend, no display)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the Agg backend must be chosen before this import


def _colors(keys: list[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {k: cmap(i % 10) for i, k in enumerate(keys)}


def _log_ticks(ax: Any, values: list[int]) -> None:
    """Label a log x axis at exactly `values` (matplotlib's minor labels would overprint them)."""
    ax.set_xticks(values)
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def throughput_vs_concurrency(results: dict[str, Any], path: Path) -> None:
    """(c) closed-loop medians with min-max bars per model; dashed line: (b) best in-process median."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = _colors(list(results["models"]))
    for key, cells in results["grpc_closed"].items():
        xs = [c["concurrency"] for c in cells]
        med = [statistics.median(c["rounds"]) for c in cells]
        low = [m - min(c["rounds"]) for m, c in zip(med, cells, strict=True)]
        high = [max(c["rounds"]) - m for m, c in zip(med, cells, strict=True)]
        ax.errorbar(xs, med, yerr=[low, high], marker="o", capsize=3, color=colors[key], label=key)
        best_b = max(statistics.median(c["rounds"]) for c in results["in_process"][key])
        ax.axhline(best_b, color=colors[key], linestyle="--", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel="concurrent callers", ylabel="items/s (gRPC, median of rounds)")
    _log_ticks(ax, [c["concurrency"] for c in next(iter(results["grpc_closed"].values()))])
    ax.set_title("End-to-end throughput (dashed: in-process runtime)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def latency_cdf(results: dict[str, Any], path: Path) -> None:
    """Open-loop latency CDF per model: solid at the lower load, dashed at the higher."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = _colors(list(results["models"]))
    styles = ["-", "--", ":", "-."]
    percentiles = list(range(101))
    for key, runs in results["grpc_open"].items():
        for i, run in enumerate(runs):
            ax.plot(
                run["quantiles_ms"],
                percentiles,
                styles[i % len(styles)],
                color=colors[key],
                label=f"{key} @{run['fraction']:.0%}",
            )
    ax.set(xscale="log", xlabel="request latency (ms)", ylabel="percentile")
    ax.set_title("Open-loop latency CDF (Poisson arrivals)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)


def throughput_vs_seq_len(results: dict[str, Any], path: Path) -> None:
    """Mode (a): one panel per batch size, items/s vs tokens per text."""
    batches = results["config"]["grid_batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(4 * len(batches), 4), sharey=True, squeeze=False)
    colors = _colors(list(results["models"]))
    for ax, batch in zip(axes[0], batches, strict=True):
        for key, cells in results["model_only"].items():
            mine = [c for c in cells if c["batch"] == batch]
            xs = [c["seq_len"] for c in mine]
            ax.plot(xs, [statistics.median(c["rounds"]) for c in mine], "o-", color=colors[key], label=key)
        ax.set(xscale="log", yscale="log", xlabel="tokens per text", title=f"batch {batch}")
        _log_ticks(ax, results["config"]["grid_seq_lens"])
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("items/s (model only, median)")
    axes[0][-1].legend(fontsize=8)
    _save(fig, path)


def quality_vs_throughput(results: dict[str, Any], path: Path) -> None:
    """STS-B dev and teacher agreement against end-to-end throughput; the Pareto front is drawn."""
    summary = results["summary"]["models"]
    metrics = [
        ("stsb_dev_spearman", "STS-B dev Spearman ×100"),
        ("agreement_spearman", "teacher agreement ρ"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    colors = _colors(list(results["models"]))
    for ax, (metric, title) in zip(axes, metrics, strict=True):
        points = [
            (summary[k]["grpc"]["median"], q[metric], k) for k, q in results["quality"].items() if metric in q
        ]
        for x, y, k in points:
            ax.scatter([x], [y], color=colors[k], s=40, zorder=3)
            name = k + (" (random weights)" if results["models"][k]["random_weights"] else "")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        front = _pareto(points)
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", linewidth=0.8, label="Pareto front")
        ax.set(xscale="log", xlabel="end-to-end items/s (gRPC, best median)", ylabel=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, path)


def _pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points no other point beats on both throughput and quality, by throughput."""
    front = [
        p
        for p in points
        if not any((q[0] >= p[0] and q[1] > p[1]) or (q[0] > p[0] and q[1] >= p[1]) for q in points)
    ]
    return sorted(front)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every figure the report links, written into `out_dir`."""
    figures = {
        "throughput_vs_concurrency.png": throughput_vs_concurrency,
        "latency_cdf.png": latency_cdf,
        "throughput_vs_seq_len.png": throughput_vs_seq_len,
        "quality_vs_throughput.png": quality_vs_throughput,
    }
    for name, draw in figures.items():
        draw(results, out_dir / name)
    return [out_dir / name for name in figures]
