"""SessionPool's inline path: a tiny batch on an idle pool runs on the caller's thread, anything else on a
worker; both give the same embeddings as a direct ONNX run."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedder.bundle import Bundle
from embedder.session import InferenceSession, SessionPool, make_session


class ThreadRecorder:
    """Wraps real sessions; records the thread each run happens on and can hold a run at a gate."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def factory(self, path: Path, intra_op_threads: int) -> InferenceSession:
        recorder, inner = self, make_session(path, intra_op_threads)

        class Recorded:
            def run(self, output_names: list[str], input_feed: dict[str, Any]) -> list[Any]:
                recorder.threads.append(threading.current_thread().name)
                recorder.entered.set()
                recorder.gate.wait(30)
                return inner.run(output_names, input_feed)

        return Recorded()


def make_pool(bundle: Bundle, recorder: ThreadRecorder, inline_max_tokens: int) -> SessionPool:
    m = bundle.manifest
    return SessionPool(
        bundle.model_path,
        m.dim,
        m.pad_token_id,
        workers=2,
        session_factory=recorder.factory,
        inline_max_tokens=inline_max_tokens,
    )


ROW = [101, 2023, 2003, 1037, 3231, 102]


@pytest.mark.parametrize(
    ("rows", "inline_max_tokens", "inline"),
    [
        ([ROW], 128, True),
        ([ROW] * 21, 128, True),  # 21 x 6 = 126 padded tokens
        ([ROW] * 22, 128, False),  # 132 padded tokens
        ([ROW, ROW * 30], 128, False),  # padded to the longest row: 2 x 180
        ([ROW], 0, False),
    ],
)
def test_inline_only_for_tiny_batches(
    bundle: Bundle, rows: list[list[int]], inline_max_tokens: int, inline: bool
) -> None:
    recorder = ThreadRecorder()
    pool = make_pool(bundle, recorder, inline_max_tokens)
    try:
        recorder.threads.clear()
        out = asyncio.run(pool.embed_rows_async(rows))
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
        first = asyncio.ensure_future(pool.embed_rows_async([ROW] * 40))  # too big: a worker
        await asyncio.get_running_loop().run_in_executor(None, recorder.entered.wait, 30)
        second = asyncio.ensure_future(pool.embed_rows_async([ROW]))  # tiny, but the pool is busy
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
