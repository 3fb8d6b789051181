"""`streamrec-bench overhead`: a real server logs its batches, the model replays them and sorted ones.

Timing is not judged (the machine is shared); what must hold: the replay ran the rows the server
logged, sorting never pads more than the server did, and every figure is a measurement.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.inputs import Inputs
from benchmarks.overhead import ideal_batches, markdown, padding_efficiency, run_overhead
from embedder.core.bundle import Bundle


def test_padding_efficiency_and_ideal_batches() -> None:
    batches = [[[1, 2, 3, 4], [1, 2]], [[1, 2, 3], [1, 2, 3, 4, 5, 6]]]
    assert padding_efficiency(batches) == pytest.approx((4 + 2 + 3 + 6) / (8 + 12))
    ideal = ideal_batches(batches, 2)
    assert [[len(r) for r in b] for b in ideal] == [[2, 3], [4, 6]]
    assert padding_efficiency(ideal) > padding_efficiency(batches)


@pytest.mark.timeout(300)
def test_overhead_run_replays_the_servers_batches(bundle: Bundle) -> None:
    words = ["quiet", "drama", "space", "moon", "cooking", "show", "family", "garden", "travel", "music"]
    texts = [" ".join(words[(i + k) % 10] for k in range(3 + i % 25)) + f" {i}" for i in range(256)]
    inputs = Inputs(texts, "test", "generated", "texts of 4 to 28 words")
    report = run_overhead(Path(bundle.path), inputs, callers=4, seconds=0.3, ideal_batch=8)
    c, a, b = report["c_server"], report["a_logged_batches"], report["b_ideal_batches"]
    assert c["errors"] == 0 and c["requests"] >= 1 and c["batches"] >= 1
    assert 0 < c["padding_efficiency"] == a["padding_efficiency"] <= b["padding_efficiency"] <= 1.0
    for part in (a, b, report["tokenizer"]):
        assert math.isfinite(part["items_per_s"]) and part["items_per_s"] > 0
        assert part["cpu_ms_per_item"] > 0
    assert report["ratios"]["c_over_a"] == pytest.approx(c["items_per_s"] / a["items_per_s"])
    assert report["inputs"]["set"] == "test" and report["environment"]["cpu_model"]
    d = report["d_runtime_null_model"]  # the same server with a null model: the runtime alone
    assert d["errors"] == 0 and d["items_per_s"] > 0 and d["cpu_ms_per_item"] > 0
    for part in (c, d):  # the server's own time per call, from its responses, within the caller's
        assert part["server_p50_ms"] is not None and 0 < part["server_p50_ms"] <= part["p50_ms"]
    text = markdown(report)
    assert "(a) model on the server's batches" in text and "set `test`" in text
    assert "(d) server with a null model" in text and "callers' p50 vs the server's own p50" in text
