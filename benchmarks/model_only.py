"""Mode (a), model only: ONNX Runtime in process on fixed batch x sequence-length inputs.

No tokenizer, no batcher, no gRPC: the ceiling the rest of the stack can approach. The sessions are the
server's own (`embedder.core.session.make_session`): one single-threaded session per worker thread, one
worker per core, as the server runs them (docs/performance.md).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from embedder.core.session import ATTENTION_MASK, INPUT_IDS, OUTPUT, make_session

IntArray = npt.NDArray[np.int64]


class ModelOnly:
    """`workers` single-threaded ONNX sessions of one model, each driven by its own thread."""

    def __init__(self, model_path: Path, workers: int) -> None:
        if workers <= 0:
            raise ValueError(f"workers must be > 0 (got {workers})")
        self.sessions = [make_session(model_path, intra_op_threads=1) for _ in range(workers)]

    def warm_up(self, input_ids: IntArray, attention_mask: IntArray) -> None:
        """One run per session, so first-run allocations for this shape are not timed."""
        feed = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        for session in self.sessions:
            session.run([OUTPUT], feed)

    def items_per_s(
        self, input_ids: IntArray, attention_mask: IntArray, seconds: float, min_batches: int = 1
    ) -> float:
        """Items per second over all sessions: each thread runs batches until `seconds` have passed and
        it has run at least `min_batches`; the clock stops when the last thread finishes its batch."""
        feed = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        done = [0] * len(self.sessions)
        start = time.perf_counter()
        stop_at = start + seconds

        def worker(i: int) -> None:
            session = self.sessions[i]
            while done[i] < min_batches or time.perf_counter() < stop_at:
                session.run([OUTPUT], feed)
                done[i] += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(self.sessions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        return sum(done) * input_ids.shape[0] / elapsed
