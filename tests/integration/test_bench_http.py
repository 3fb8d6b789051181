"""`streamrec-bench http`: gRPC and the HTTP front measured on one real server with the same texts.

Timing is not judged (the machine is shared); what must hold: both fronts answered every call and
every figure is a measurement."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.http_front import markdown, run_http_vs_grpc
from benchmarks.inputs import Inputs
from embedder.core.bundle import Bundle


@pytest.mark.timeout(300)
def test_http_and_grpc_are_measured_on_one_server(bundle: Bundle) -> None:
    texts = [f"item {i}: a short catalogue description of a show about {i % 7} friends" for i in range(128)]
    inputs = Inputs(texts, "test", "generated", "generated item texts")
    report = run_http_vs_grpc(Path(bundle.path), inputs, callers=2, seconds=0.3, rounds=1)
    for front in ("grpc", "http"):
        (run,) = report["runs"][front]
        assert run["errors"] == 0 and run["requests"] >= 1
        assert math.isfinite(report["items_per_s_median"][front]) and report["items_per_s_median"][front] > 0
    assert report["http_over_grpc"] == pytest.approx(
        report["items_per_s_median"]["http"] / report["items_per_s_median"]["grpc"]
    )
    assert "| http |" in markdown(report)
