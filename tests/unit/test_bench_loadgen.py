"""The closed-loop measurement window of the benchmark's load generator, on callers of known speed.

The callers sleep (asyncio) instead of calling a server, so the nominal rate is known; sleeping can only
run late, never early, so a measured rate may fall short of it on a busy machine but never exceed it by
more than the window's rounding. Whatever the machine does, a closed loop obeys Little's law
(throughput = callers x items per request / mean latency): the rate must agree with its own latencies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from benchmarks.loadgen import Window, run_closed


def _caller(seconds: float, items: int) -> Callable[[int], Awaitable[int]]:
    async def call(k: int) -> int:
        await asyncio.sleep(seconds)
        return items

    return call


def test_window_rate_matches_known_callers() -> None:
    # 4 callers x 10 items every 50 ms = 800 items/s.
    window = Window(seconds=0.4, warmup_s=0.05, min_requests=5, max_seconds=5.0)
    result = asyncio.run(run_closed(_caller(0.05, 10), 4, window))
    assert result.items_per_s <= 1.05 * 800, result
    assert result.items_per_s == pytest.approx(4 * 10 / (result.mean_ms / 1000), rel=0.25), result
    assert result.errors == 0
    assert result.seconds >= 0.4
    assert result.p50_ms >= 49, result


def test_window_holds_min_requests_when_calls_are_slower_than_the_window() -> None:
    # One caller, 0.25 s per request: a 0.1-s time window alone would hold zero or one request and
    # report 0 or ~100 items/s; the window must instead stretch to hold min_requests completions.
    window = Window(seconds=0.1, warmup_s=0.0, min_requests=3, max_seconds=10.0)
    result = asyncio.run(run_closed(_caller(0.25, 8), 1, window))
    assert result.requests >= 3, result
    assert result.items_per_s <= 1.05 * 32, result
    assert result.items_per_s == pytest.approx(8 / (result.mean_ms / 1000), rel=0.25), result


def test_window_gives_up_at_max_seconds_with_what_completed() -> None:
    window = Window(seconds=0.1, warmup_s=0.0, min_requests=100, max_seconds=0.5)
    result = asyncio.run(run_closed(_caller(0.05, 1), 1, window))
    assert 0.5 <= result.seconds <= 3.0, result
    assert 1 <= result.requests < 100, result


def test_failed_calls_are_counted_not_raised() -> None:
    async def flaky(k: int) -> int:
        await asyncio.sleep(0.02)
        if k % 2:
            raise RuntimeError("server said no")
        return 4

    result = asyncio.run(run_closed(flaky, 1, Window(seconds=0.3, warmup_s=0.05, min_requests=3)))
    assert result.requests >= 3 and result.errors >= 3, result
    assert result.items == 4 * result.requests
