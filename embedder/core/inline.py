"""When work runs on the event loop itself instead of a thread: the one place that decides.

For one short text the hop to a worker thread and back costs more than the work (~0.25 ms to tokenize vs
~0.03 ms; ~0.4 ms for inference vs the CNN's ~0.06 ms), so a lone caller on an idle server is answered
faster inline. Tokenizing stays inline up to a whole request of item texts (`tokenize_max_chars`): the
fast path is Python that holds the GIL on a tokenizer thread too, so the hop buys no parallelism. Under
load the loop must stay free for the front end, so inference runs inline only for a lone batch (nothing
else running or queued) of at most `infer_max_tokens` padded tokens with every worker idle, and only for
a model fast enough: `calibrate` times a batch of that size at warm-up and turns inline inference off if
it takes more than `INLINE_BUDGET_S` (a transformer would hold the loop for milliseconds). A watchdog
cannot cover an inline batch: if ONNX Runtime hung on one, the server would stop answering and its
liveness probe would restart it. 0 in either knob = never inline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

# The longest an inline batch of `infer_max_tokens` may take (fastest of the warm-up runs). A call that
# arrives while a lone batch runs inline waits at most this; at half the one-text p50 target (2 ms, the
# README's targets table) it keeps that call within target. The CNN on 128 padded tokens takes ~0.1 ms
# on AVX-512 and ~0.55 ms on AVX2-only CPUs; MiniLM takes several ms and stays off the loop.
INLINE_BUDGET_S = 0.001


class InlinePolicy:
    """`tokenize_max_chars`, `infer_max_tokens`: the config's `inline_*` knobs."""

    def __init__(self, tokenize_max_chars: int, infer_max_tokens: int) -> None:
        self.tokenize_max_chars = tokenize_max_chars
        self.infer_max_tokens = infer_max_tokens

    def tokenize_inline(self, texts: Sequence[str]) -> bool:
        """Tokenize this request on the loop (a few short texts)?"""
        return sum(len(t) for t in texts) <= self.tokenize_max_chars

    def infer_inline(self, rows: Sequence[Sequence[int]], *, lone: bool, workers_idle: bool) -> bool:
        """Run this batch on the loop? Only tiny, lone, and with no worker busy (a busy one means load)."""
        if not (lone and workers_idle and rows and self.infer_max_tokens > 0):
            return False
        return len(rows) * max(map(len, rows)) <= self.infer_max_tokens

    def calibrate(self, time_one_run: Callable[[int], float], max_runs: int = 20) -> None:
        """Turn inline inference off if a batch of `infer_max_tokens` padded tokens is too slow for the
        loop. `time_one_run(tokens)` runs such a batch and returns its seconds. One run within budget is
        enough (a noisy neighbour at start-up only slows runs down); three runs all over 10x the budget
        settle it the other way."""
        if self.infer_max_tokens <= 0:
            return
        fastest = float("inf")
        for run in range(max_runs):
            fastest = min(fastest, time_one_run(self.infer_max_tokens))
            if fastest <= INLINE_BUDGET_S or (run >= 2 and fastest > 10 * INLINE_BUDGET_S):
                break
        if fastest > INLINE_BUDGET_S:
            log.info(
                "inline inference off: %d padded tokens take %.2f ms (budget %.2f ms)",
                self.infer_max_tokens,
                fastest * 1e3,
                INLINE_BUDGET_S * 1e3,
            )
            self.infer_max_tokens = 0
