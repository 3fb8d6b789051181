"""ONNX Runtime inference: a pool of workers, each with its own session (like Triton's model instances).

On 2-core VMs one 1-thread session per core beats one session with 2 intra-op threads by 1.5-2.5x
for small CNNs and is stable where the 2-thread session is not (shared/PERF_NOTES.md).
"""

from __future__ import annotations

import asyncio
import queue
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from embedder.errors import BundleError, InferenceError
from embedder.tokenizer import pad_batch

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
OUTPUT = "embeddings"

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def make_session(model_path: str | Path, intra_op_threads: int) -> ort.InferenceSession:
    """One CPU session with full graph optimisation; raises `BundleError` if the graph breaks the contract."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads burn a shared 2-core box for nothing between batches.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise BundleError(f"cannot load ONNX model {model_path}: {exc}") from None
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if not {INPUT_IDS, ATTENTION_MASK} <= inputs or OUTPUT not in outputs:
        raise BundleError(
            f"{model_path}: model must take {INPUT_IDS}, {ATTENTION_MASK} and output {OUTPUT} "
            f"(has inputs {sorted(inputs)}, outputs {sorted(outputs)})"
        )
    return session


class SessionPool:
    """`workers` sessions behind one thread pool; `run` is thread-safe, `run_async` keeps the loop free."""

    def __init__(
        self, model_path: str | Path, dim: int, pad_token_id: int, workers: int, intra_op_threads: int = 1
    ) -> None:
        if workers <= 0:
            raise ValueError(f"workers must be > 0 (got {workers})")
        self.dim = dim
        self.pad_token_id = pad_token_id
        self.workers = workers
        self._free: queue.SimpleQueue[ort.InferenceSession] = queue.SimpleQueue()
        for _ in range(workers):
            self._free.put(make_session(model_path, intra_op_threads))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="embedder-infer")

    def run(self, input_ids: IntArray, attention_mask: IntArray) -> FloatArray:
        """Embed one padded batch; checks the model returned one `dim`-wide row per input row."""
        session = self._free.get()
        try:
            out = session.run([OUTPUT], {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask})[0]
        finally:
            self._free.put(session)
        result = np.asarray(out, dtype=np.float32)
        expected = (input_ids.shape[0], self.dim)
        if result.shape != expected:
            raise InferenceError(f"model returned shape {result.shape} for a batch needing {expected}")
        return result

    async def run_async(self, input_ids: IntArray, attention_mask: IntArray) -> FloatArray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run, input_ids, attention_mask)

    def embed_rows(self, rows: list[list[int]]) -> FloatArray:
        """Pad unpadded token rows into one batch and embed it (padding runs in the worker thread too)."""
        input_ids, attention_mask = pad_batch(rows, self.pad_token_id)
        return self.run(input_ids, attention_mask)

    async def embed_rows_async(self, rows: list[list[int]]) -> FloatArray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.embed_rows, rows)

    def warm_up(self) -> None:
        """Run a tiny batch on every session: catches a wrong `dim` at start, not on the first call."""
        ids = np.full((2, 4), self.pad_token_id, dtype=np.int64)
        mask = np.ones_like(ids)
        sessions = [self._free.get() for _ in range(self.workers)]
        try:
            for session in sessions:
                out = np.asarray(session.run([OUTPUT], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0])
                if out.shape != (2, self.dim):
                    raise BundleError(
                        f"model outputs shape {out.shape} for 2 texts; manifest says dim={self.dim}"
                    )
        finally:
            for session in sessions:
                self._free.put(session)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
