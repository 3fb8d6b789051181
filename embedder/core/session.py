"""ONNX Runtime inference: a pool of workers, each with its own session (like Triton's model instances).

On 2-core VMs one 1-thread session per core beats one session with 2 intra-op threads by 1.5-2.5x
for small CNNs and is stable where the 2-thread session is not (docs/performance.md).

A watchdog bounds every batch by `inference_timeout_s`: a worker stuck past it is abandoned (its
callers get an error, its session is replaced by a fresh one), so a stuck or dead worker never leaves
callers waiting forever. Sessions come from a `SessionFactory`, the seam tests use to inject faults.

A lone tiny batch may run right on the calling event-loop thread instead; `embedder.core.inline`
decides when (and `warm_up` calibrates it). The watchdog cannot cover an inline batch.

With priority lanes (`lanes=True`, core/lanes.py) bulk batches run on threads of their own at a lower
OS priority, and the pool holds one session more than `workers`: the scheduler lets each lane run at
most `workers` batches, so an interactive batch always finds a free session. Sessions are shared by the
lanes; the priority belongs to the thread that calls `run` (with `intra_op_threads` 1, ONNX Runtime
computes on that thread; with more, its own intra-op threads keep the server's priority).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from embedder.core.inline import InlinePolicy
from embedder.core.lanes import BULK, BULK_NICE_INCREMENT, INTERACTIVE
from embedder.core.tokenizer import pad_batch
from embedder.core.workers import DaemonThreadPool, call_guarded
from embedder.errors import BundleError, InferenceError, InferenceTimeoutError

log = logging.getLogger(__name__)

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
OUTPUT = "embeddings"

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


class InferenceSession(Protocol):
    """The part of `onnxruntime.InferenceSession` the pool uses (a test wrapper implements it too)."""

    def run(self, output_names: list[str], input_feed: dict[str, Any]) -> list[Any]: ...


# (model path, intra-op threads) -> a ready session. `make_session` is the real one.
SessionFactory = Callable[[Path, int], InferenceSession]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


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
        raise BundleError(f"cannot load ONNX model {model_path}: {_one_line(exc)}") from None
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if not {INPUT_IDS, ATTENTION_MASK} <= inputs or OUTPUT not in outputs:
        raise BundleError(
            f"{model_path}: model must take {INPUT_IDS}, {ATTENTION_MASK} and output {OUTPUT} "
            f"(has inputs {sorted(inputs)}, outputs {sorted(outputs)})"
        )
    return session


@dataclass
class _Job:
    """One batch handed to a worker thread; `state` is guarded by the pool's lock."""

    state: str = "waiting"  # waiting -> running -> done, or cancelled (never ran) / abandoned (stuck)


class SessionPool:
    """`workers` sessions on daemon threads; `run` is thread-safe, `embed_rows_async` keeps the loop free."""

    def __init__(
        self,
        model_path: str | Path,
        dim: int,
        pad_token_id: int,
        workers: int,
        intra_op_threads: int = 1,
        *,
        inference_timeout_s: float | None = None,
        session_factory: SessionFactory | None = None,
        on_exhausted: Callable[[], None] | None = None,
        inline: InlinePolicy | None = None,
        lanes: bool = False,
    ) -> None:
        """`inline`: when a batch may run on the caller's thread (default: never); `lanes`: bulk batches
        get threads of their own at a lower priority, and one spare session (module docstring)."""
        if workers <= 0:
            raise ValueError(f"workers must be > 0 (got {workers})")
        self.dim = dim
        self.pad_token_id = pad_token_id
        self.workers = workers
        self.sessions = workers + 1 if lanes else workers
        self.inference_timeout_s = inference_timeout_s
        self.inline = inline or InlinePolicy(0, 0)
        self.inline_batches = 0
        self._model_path = Path(model_path)
        self._intra_op_threads = intra_op_threads
        self._factory: SessionFactory = session_factory or make_session
        self._on_exhausted = on_exhausted
        # Each abandoned (stuck) worker gets one replacement, up to `workers` in all; then we give up.
        self.max_replacements = workers
        self.replaced = 0
        self._lock = threading.Lock()
        self._free: queue.SimpleQueue[InferenceSession] = queue.SimpleQueue()
        for _ in range(self.sessions):
            self._free.put(self._factory(self._model_path, intra_op_threads))
        # Per lane: room for the replacements' threads next to the stuck ones they replace.
        threads = workers + self.max_replacements
        self._executor = DaemonThreadPool(threads, "embedder-infer")
        self._bulk_executor = (
            DaemonThreadPool(threads, "embedder-infer-bulk", BULK_NICE_INCREMENT) if lanes else None
        )

    def run(self, input_ids: IntArray, attention_mask: IntArray, job: _Job | None = None) -> FloatArray:
        """Embed one padded batch; checks the model returned one `dim`-wide row per input row."""
        session = self._free.get()
        if job is not None and not self._start(job, session):
            raise InferenceTimeoutError("batch abandoned before it ran")
        try:
            out = session.run([OUTPUT], {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask})[0]
        finally:
            self._finish(job, session)
        return self._checked(out, input_ids.shape[0])

    def _checked(self, out: Any, rows: int) -> FloatArray:
        result = np.asarray(out, dtype=np.float32)
        expected = (rows, self.dim)
        if result.shape != expected:
            raise InferenceError(f"model returned shape {result.shape} for a batch needing {expected}")
        return result

    def _start(self, job: _Job, session: InferenceSession) -> bool:
        with self._lock:
            if job.state == "waiting":
                job.state = "running"
                return True
        self._free.put(session)  # the watchdog gave up on this batch while it waited for a session
        return False

    def _finish(self, job: _Job | None, session: InferenceSession) -> None:
        with self._lock:
            stuck = job is not None and job.state == "abandoned"
            if job is not None and not stuck:
                job.state = "done"
        if stuck:
            log.warning("an abandoned inference worker finished late; its session is retired")
        else:
            self._free.put(session)

    def embed_rows(self, rows: list[list[int]], job: _Job | None = None) -> FloatArray:
        """Pad unpadded token rows into one batch and embed it (padding runs in the worker thread too)."""
        input_ids, attention_mask = pad_batch(rows, self.pad_token_id)
        return self.run(input_ids, attention_mask, job)

    async def embed_rows_async(
        self, rows: list[list[int]], lone: bool = False, lane: str = INTERACTIVE
    ) -> FloatArray:
        """`embed_rows` on a worker thread of `lane`, bounded by `inference_timeout_s`
        (InferenceTimeoutError), or inline when the policy allows it (never a bulk batch: the loop runs
        at the server's priority); `lone`: no other batch is running or queued."""
        idle = self._free.qsize() >= self.sessions
        if lane == INTERACTIVE and self.inline.infer_inline(rows, lone=lone, workers_idle=idle):
            session = self._take_session_nowait()
            if session is not None:
                return self._run_inline(session, rows)
        job = _Job()
        executor = self._bulk_executor if lane == BULK and self._bulk_executor else self._executor
        future = asyncio.get_running_loop().run_in_executor(executor, self.embed_rows, rows, job)
        try:
            return await asyncio.wait_for(future, self.inference_timeout_s)
        except TimeoutError:
            self._abandon(job)
            raise InferenceTimeoutError(
                f"batch of {len(rows)} texts ran past inference_timeout_s={self.inference_timeout_s}"
            ) from None

    def _take_session_nowait(self) -> InferenceSession | None:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return None

    def _run_inline(self, session: InferenceSession, rows: list[list[int]]) -> FloatArray:
        input_ids, attention_mask = pad_batch(rows, self.pad_token_id)
        feed = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        try:
            out = call_guarded(session.run, [OUTPUT], feed)[0]
        finally:
            self._free.put(session)
        self.inline_batches += 1
        return self._checked(out, len(rows))

    def _abandon(self, job: _Job) -> None:
        with self._lock:
            was = job.state
            job.state = "cancelled" if was == "waiting" else "abandoned" if was == "running" else was
        if was != "running":
            return  # it never got a session (queued behind stuck workers) or just finished: no leak
        if self.replaced >= self.max_replacements:
            log.critical("inference workers keep getting stuck (%d replaced); giving up", self.replaced)
            if self._on_exhausted is not None:
                self._on_exhausted()
            return
        self.replaced += 1
        log.error("inference worker stuck past %ss; replacing its session", self.inference_timeout_s)
        threading.Thread(target=self._add_session, name="embedder-replace", daemon=True).start()

    def _add_session(self) -> None:
        try:
            self._free.put(self._factory(self._model_path, self._intra_op_threads))
        except Exception:
            log.exception("cannot create a replacement inference session")
            if self._on_exhausted is not None:
                self._on_exhausted()

    def warm_up(self, largest: tuple[int, int] | None = None) -> None:
        """Run a tiny batch on every session: catches a wrong `dim` at start, not on the first call.
        Then, if given, a batch of the `largest` (rows, tokens) the scheduler can form: ONNX Runtime's
        memory arena grows to the largest batch a session has run and keeps it (~21 MB per session for
        64 x 128 tokens), so the server reaches its working RSS at start, not under the first burst."""
        shapes = [(2, 4)] + ([largest] if largest is not None else [])
        sessions = [self._free.get() for _ in range(self.sessions)]
        try:
            for session in sessions:
                for rows, tokens in shapes:
                    self._warm_one(session, rows, tokens)
            first = sessions[0]
            self.inline.calibrate(lambda tokens: self._time_one_run(first, tokens))
        finally:
            for session in sessions:
                self._free.put(session)

    def _warm_one(self, session: InferenceSession, rows: int, tokens: int) -> None:
        ids = np.full((rows, tokens), self.pad_token_id, dtype=np.int64)
        try:
            out = np.asarray(session.run([OUTPUT], {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)})[0])
        except Exception as exc:
            raise BundleError(f"model fails on a warm-up batch: {_one_line(exc)}") from None
        if out.shape != (rows, self.dim):
            raise BundleError(
                f"model outputs shape {out.shape} for {rows} texts; manifest says dim={self.dim}"
            )

    def _time_one_run(self, session: InferenceSession, tokens: int) -> float:
        """Seconds one run of a single row of `tokens` padded tokens takes (inline calibration)."""
        ids = np.full((1, tokens), self.pad_token_id, dtype=np.int64)
        feed = {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)}
        started = time.perf_counter()
        session.run([OUTPUT], feed)
        return time.perf_counter() - started

    def close(self) -> None:
        """Stop the worker threads; a stuck one is left behind (daemon) and cannot block exit."""
        for executor in (self._executor, self._bulk_executor):
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True, timeout_s=5.0)
