"""The committed benchmark results are what the README shows: no hand-typed figure can drift from them.

The latest full run under benchmarks/results/ must re-derive to its own summary, report and README
snippet from its raw measurements, and README.md must carry that snippet verbatim.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.publish import readme_snippet
from benchmarks.report import render
from benchmarks.summary import derive

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def _latest_full_run() -> Path:
    runs = sorted(p for p in RESULTS.iterdir() if (p / "results.json").is_file())
    full = [p for p in runs if not json.loads((p / "results.json").read_text())["config"]["quick"]]
    if not full:
        pytest.fail(f"no full benchmark run committed under {RESULTS}")
    return full[-1]


@pytest.fixture(scope="module")
def latest() -> tuple[Path, dict[str, Any]]:
    run_dir = _latest_full_run()
    return run_dir, json.loads((run_dir / "results.json").read_text(encoding="utf-8"))


def test_only_the_latest_full_run_is_committed(latest: tuple[Path, dict[str, Any]]) -> None:
    runs = [p.name for p in RESULTS.iterdir() if p.is_dir()]
    assert runs == [latest[0].name], runs


def test_summary_and_report_rederive_from_the_raw_measurements(latest: tuple[Path, dict[str, Any]]) -> None:
    run_dir, results = latest
    raw = copy.deepcopy(results)
    committed_summary = raw.pop("summary")
    raw["summary"] = derive(raw)
    # JSON turns tuples into lists: compare through the same encoding.
    assert json.loads(json.dumps(raw["summary"])) == committed_summary
    assert render(raw) == (run_dir / "report.md").read_text(encoding="utf-8")


def test_readme_carries_the_latest_snippet(latest: tuple[Path, dict[str, Any]]) -> None:
    run_dir, results = latest
    snippet = readme_snippet(results, run_dir)
    assert snippet == (run_dir / "readme_snippet.md").read_text(encoding="utf-8")
    assert snippet.strip() in (ROOT / "README.md").read_text(encoding="utf-8")
