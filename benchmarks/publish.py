"""Write a run's outputs: results.json (raw + derived), report.md, the PNG figures, a README snippet."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from benchmarks import focused
from benchmarks.models import CNN
from benchmarks.plots import draw_all
from benchmarks.report import label, num, rate, ratio_text, render, targets_table
from benchmarks.summary import derive

README_FIGURE = "throughput_vs_concurrency.png"


def readme_snippet(results: dict[str, Any], run_dir: Path) -> str:
    """The headline table and one plot, for README.md (paths relative to the repository root)."""
    s, q = results["summary"]["models"], results["quality"]
    rows = [
        f"| {label(results, k)} | {rate(m['model_only']['median'])} | {rate(m['grpc']['median'])} "
        f"| {num(m['efficiency'], '.2f')} | {q[k]['stsb_dev_spearman']:.1f} |"
        for k, m in s.items()
    ]
    fp32 = results["summary"]["ratios"].get("minilm-fp32", {})
    ratio_line = (
        f"CNN ÷ MiniLM fp32: {ratio_text(fp32.get('model_only'))} model only, "
        f"{ratio_text(fp32.get('grpc'))} end to end over gRPC."
        if CNN in s and fp32
        else ""
    )
    env = results["environment"]
    rel = run_dir.resolve()
    with contextlib.suppress(ValueError):  # outside the repository: keep the absolute path
        rel = rel.relative_to(Path(__file__).resolve().parent.parent)
    return "\n".join(
        [
            f"Measured by `streamrec-bench` (run `{results['run_id']}`) on {env['cpu_model']}, "
            f"{env['logical_cores']} cores; medians over rounds; "
            f"full report: [{rel}/report.md]({rel}/report.md).",
            "",
            "| model | model-only items/s | end-to-end gRPC items/s | efficiency | STS-B dev ρ×100 |",
            "|---|---|---|---|---|",
            *rows,
            "",
            ratio_line,
            "",
            f"![End-to-end throughput vs concurrency]({rel}/{README_FIGURE})",
            "",
            "The issues' targets in this run (reported, not asserted: the machine is shared and noisy):",
            "",
            *targets_table(results),
            *focused.snippet_lines(run_dir),
        ]
    )


def write_outputs(results: dict[str, Any], run_dir: Path) -> None:
    """Derive the summary, then write every output file; drops the resume checkpoint once done."""
    results["summary"] = derive(results)
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    (run_dir / "report.md").write_text(render(results), encoding="utf-8")
    draw_all(results, run_dir)
    (run_dir / "readme_snippet.md").write_text(readme_snippet(results, run_dir), encoding="utf-8")
    (run_dir / "partial.json").unlink(missing_ok=True)
