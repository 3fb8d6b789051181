"""`streamrec-bench cache`: a cell warms a real server with the stream's first requests, then measures.

Timing is not judged (the machine is shared); what must hold: the warm-up reached the server's cache
and the hit ratio is the measured loop's, not the warm-up requests'."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cache_bench import _cell
from benchmarks.loadgen import Window
from embedder.core.bundle import Bundle


@pytest.mark.timeout(300)
def test_a_warmed_cell_counts_only_the_windows_hits(bundle: Bundle) -> None:
    texts = [f"item {i}: a short catalogue description of a show about {i % 7} friends" for i in range(40)]
    # 10 warm requests hold every text once; every later request repeats them.
    requests = [[texts[(4 * r + j) % 40] for j in range(4)] for r in range(400)]
    window = Window(0.3, warmup_s=0.1, min_requests=5, max_seconds=5.0)
    on = _cell(Path(bundle.path), requests, 2, window, cache_mb=16.0, warm=10)
    assert on["errors"] == 0 and on["warm_errors"] == 0 and on["items_per_s"] > 0
    assert on["hit_ratio"] == 1.0  # the warm-up's 40 misses are not in the window
    assert on["cache"]["misses"] == 40 and on["cache"]["entries"] == 40
    cold = _cell(Path(bundle.path), requests, 2, window, cache_mb=16.0, warm=0)
    assert cold["cache"]["misses"] == 40 and 0.0 < cold["hit_ratio"] < 1.0  # its first round missed
    off = _cell(Path(bundle.path), requests, 2, window, cache_mb=0.0, warm=10)
    assert off["hit_ratio"] is None and off["items_per_s"] > 0
    # The same over one EmbedStream per caller: every request answered on it, the window all hits.
    streamed = _cell(Path(bundle.path), requests, 2, window, cache_mb=16.0, warm=10, rpc="stream")
    assert streamed["mode"] == "closed-stream" and streamed["rpc"] == "stream"
    assert streamed["errors"] == 0 and streamed["requests"] >= 5 and streamed["hit_ratio"] == 1.0
    assert streamed["items"] == 4 * streamed["requests"]
    with pytest.raises(ValueError, match="rpc must be one of"):
        _cell(Path(bundle.path), requests, 2, window, cache_mb=0.0, warm=0, rpc="bidi")
