"""SessionPool's inline path: a lone tiny batch on an idle pool runs on the caller's thread, anything
else on a worker; both give the same embeddings as a direct ONNX run. A fault inline is an ordinary
error, and a model too slow for the event loop never runs there."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedder.core.bundle import Bundle
from embedder.core.inline import INLINE_BUDGET_S, InlinePolicy
from embedder.core.session import InferenceSession, SessionPool, make_session
from embedder.core.workers import WorkerDiedError


class ThreadRecorder:
    """Wraps real sessions; records the thread each run happens on and can hold a run at a gate."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.delay_s = 0.0  # every run (warm-up included) sleeps this long: a slow model
        self.exit_on_next = False  # the next run raises SystemExit, as a Rust panic would

    def factory(self, path: Path, intra_op_threads: int) -> InferenceSession:
        recorder, inner = self, make_session(path, intra_op_threads)

        class Recorded:
            def run(self, output_names: list[str], input_feed: dict[str, Any]) -> list[Any]:
                recorder.threads.append(threading.current_thread().name)
                recorder.entered.set()
                recorder.gate.wait(30)
                time.sleep(recorder.delay_s)
                if recorder.exit_on_next:
                    recorder.exit_on_next = False
                    raise SystemExit("session died")
                return inner.run(output_names, input_feed)

        return Recorded()


def make_pool(bundle: Bundle, recorder: ThreadRecorder, inline_max_tokens: int) -> SessionPool:
    m = bundle.manifest
    pool = SessionPool(
        bundle.model_path,
        m.dim,
        m.pad_token_id,
        workers=2,
        session_factory=recorder.factory,
        inline=InlinePolicy(tokenize_max_chars=0, infer_max_tokens=inline_max_tokens),
    )
    pool.warm_up()  # as the engine does: this is where a slow model loses the inline path
    return pool


ROW = [101, 2023, 2003, 1037, 3231, 102]


@pytest.mark.parametrize(
    ("rows", "inline_max_tokens", "lone", "inline"),
    [
        ([ROW], 128, True, True),
        ([ROW] * 21, 128, True, True),  # 21 x 6 = 126 padded tokens
        ([ROW] * 22, 128, True, False),  # 132 padded tokens
        ([ROW, ROW * 30], 128, True, False),  # padded to the longest row: 2 x 180
        ([ROW], 0, True, False),
        ([ROW], 128, False, False),  # the scheduler says other batches are running or queued
    ],
)
def test_inline_only_for_lone_tiny_batches(
    bundle: Bundle, rows: list[list[int]], inline_max_tokens: int, lone: bool, inline: bool
) -> None:
    recorder = ThreadRecorder()
    pool = make_pool(bundle, recorder, inline_max_tokens)
    try:
        recorder.threads.clear()
        out = asyncio.run(pool.embed_rows_async(rows, lone=lone))
        expected = pool.embed_rows(rows)  # a direct run on this thread, no event loop
        np.testing.assert_allclose(out, expected, atol=1e-6)
        ran_on = recorder.threads[0]
        assert (ran_on == "MainThread") is inline, ran_on
        assert pool.inline_batches == int(inline)
    finally:
        pool.close()


def test_busy_pool_sends_even_tiny_batches_to_a_worker(bundle: Bundle) -> None:
    """While one batch runs, the loop stays free: the next tiny batch goes to the other worker."""
    recorder = ThreadRecorder()
    pool = make_pool(bundle, recorder, 128)

    async def scenario() -> tuple[np.ndarray, np.ndarray]:
        recorder.gate.clear()
        recorder.entered.clear()
        first = asyncio.ensure_future(pool.embed_rows_async([ROW] * 40, lone=True))  # too big
        await asyncio.get_running_loop().run_in_executor(None, recorder.entered.wait, 30)
        # tiny, the caller allows inline, but a worker is busy
        second = asyncio.ensure_future(pool.embed_rows_async([ROW], lone=True))
        await asyncio.sleep(0.05)
        assert not second.done()  # it is held at the gate on a worker, not run inline
        recorder.gate.set()
        return await first, await second

    try:
        recorder.threads.clear()
        big, small = asyncio.run(scenario())
        assert big.shape[0] == 40 and small.shape[0] == 1
        assert all(name.startswith("embedder-infer") for name in recorder.threads), recorder.threads
        assert pool.inline_batches == 0
    finally:
        recorder.gate.set()
        pool.close()


def test_system_exit_inline_is_an_ordinary_error_and_the_session_comes_back(bundle: Bundle) -> None:
    recorder = ThreadRecorder()
    pool = make_pool(bundle, recorder, 128)
    try:
        recorder.exit_on_next = True
        with pytest.raises(WorkerDiedError):
            asyncio.run(pool.embed_rows_async([ROW], lone=True))
        assert recorder.threads[-1] == "MainThread"  # it did run inline
        for _ in range(3):  # both sessions are back: the pool still counts as idle and serves inline
            assert asyncio.run(pool.embed_rows_async([ROW], lone=True)).shape == (1, pool.dim)
        assert pool.inline_batches == 3
    finally:
        pool.close()


def test_a_model_too_slow_for_the_event_loop_never_runs_inline(bundle: Bundle) -> None:
    recorder = ThreadRecorder()
    recorder.delay_s = 2 * INLINE_BUDGET_S
    pool = make_pool(bundle, recorder, 128)
    try:
        assert pool.inline.infer_max_tokens == 0  # the warm-up measured it and turned the path off
        recorder.threads.clear()
        asyncio.run(pool.embed_rows_async([ROW], lone=True))
        assert recorder.threads[0].startswith("embedder-infer")
    finally:
        pool.close()
