"""The Explain runtime: the bundle's explain graph, input checks, off-loop execution.

Explain is an audit path, not the throughput product: it runs the bundle's separate `explain.onnx`
(the serving `model.onnx` stays exactly as fast as before) on its own daemon thread, outside the
batcher, never on the event loop. At most `MAX_PENDING` calls wait for that thread; beyond that a call
is refused at once (RESOURCE_EXHAUSTED), so audits cannot pile up behind each other or starve Embed
of cores. The math is in `attribution.py`, the wire format in `embedder.grpc.translate`;
docs/explain.md describes the decomposition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedder.config import ServerConfig
from embedder.core.bundle import Bundle, Manifest
from embedder.core.session import ATTENTION_MASK, INPUT_IDS, OUTPUT, make_session
from embedder.core.tokenizer import TextTokenizer, pad_batch
from embedder.core.workers import DaemonThreadPool
from embedder.errors import (
    BundleError,
    DeadlineExceededError,
    InferenceTimeoutError,
    InvalidInputError,
    NotSupportedError,
    OverloadedError,
)
from embedder.explain.attribution import Explanation, explain, text_terms

CONTRIBUTIONS = "token_contributions"
BIAS = "bias"
DEFAULT_TOP_PAIRS = 10
MAX_TOP_PAIRS = 256
EXPLAIN_THREADS = 1
MAX_PENDING = 32


@dataclass(frozen=True)
class ExplainOptions:
    top_pairs: int = DEFAULT_TOP_PAIRS
    truncate: bool = True
    dimensions: int = 0


@dataclass(frozen=True)
class ExplainResult:
    explanation: Explanation
    query: str
    candidate: str
    dim: int
    tokenize_s: float
    inference_s: float
    queue_s: float = 0.0


class Explainer:
    """Tokenizer with offsets + one single-threaded session of `explain.onnx`; `run` is thread-safe."""

    def __init__(self, bundle: Bundle, max_text_chars: int, timeout_s: float | None = None) -> None:
        path = bundle.explain_path
        if path is None:
            raise NotSupportedError(unsupported_message(bundle.manifest))
        m = bundle.manifest
        self.manifest = m
        self.max_text_chars = max_text_chars
        self.timeout_s = timeout_s
        self.tokenizer = TextTokenizer.from_file(bundle.tokenizer_path, m.max_tokens, m.pad_token_id)
        self._session = make_session(path, 1)
        outputs = {o.name for o in self._session.get_outputs()}
        if not {CONTRIBUTIONS, BIAS} <= outputs:
            raise BundleError(f"{path}: explain graph must output {CONTRIBUTIONS} and {BIAS}")
        self._lock = threading.Lock()
        self._pending = 0
        self._executor: DaemonThreadPool | None = None
        self._check_decomposition()

    @classmethod
    def for_bundle(cls, bundle: Bundle, config: ServerConfig) -> Explainer | None:
        """The bundle's explainer, or None if it has no explain graph (Explain is then UNIMPLEMENTED)."""
        if bundle.explain_path is None:
            return None
        return cls(bundle, config.max_text_chars, config.inference_timeout_s)

    def _check_decomposition(self) -> None:
        """At start, not on the first call: the graph's parts must add up to its own embeddings."""
        rows = [self.tokenizer.spans(text).ids for text in ("hello world", "a check")]
        ids, mask = pad_batch(rows, self.manifest.pad_token_id)
        try:
            emb, contrib, bias = self._session.run(
                [OUTPUT, CONTRIBUTIONS, BIAS], {INPUT_IDS: ids, ATTENTION_MASK: mask}
            )
        except Exception as exc:
            raise BundleError(
                f"explain graph fails on a warm-up batch: {' '.join(str(exc).split())}"
            ) from None
        dim = self.manifest.dim
        if np.shape(contrib) != (2, ids.shape[1], dim) or np.shape(bias) != (2, dim):
            raise BundleError(f"explain graph outputs {np.shape(contrib)}, {np.shape(bias)}; dim is {dim}")
        err = float(np.abs(np.sum(contrib, axis=1) + bias - emb).max())
        if err > 1e-3 * max(1.0, float(np.abs(emb).max())):
            raise BundleError(f"explain graph: contributions + bias miss its embeddings by {err:.2e}")

    def validate(self, query: str, candidate: str, options: ExplainOptions) -> None:
        """Raise `InvalidInputError` naming the field and the limit (the same limits as Embed)."""
        if not query:
            raise InvalidInputError(f"query: empty; send 1..{self.max_text_chars} characters")
        for name, text in (("query", query), ("candidate", candidate)):
            if len(text) > self.max_text_chars:
                raise InvalidInputError(
                    f"{name}: {len(text)} characters exceed max_text_chars={self.max_text_chars}"
                )
        if not 0 <= options.top_pairs <= MAX_TOP_PAIRS:
            raise InvalidInputError(f"top_pairs: {options.top_pairs} outside 0..{MAX_TOP_PAIRS}")
        self.manifest.check_dimensions(options.dimensions)

    def run(self, query: str, candidate: str = "", options: ExplainOptions | None = None) -> ExplainResult:
        """Explain in the calling thread: tokenize, one graph run for both texts, decompose."""
        opts = options or ExplainOptions()
        self.validate(query, candidate, opts)
        t0 = time.perf_counter()
        q_spans = self.tokenizer.spans(query, opts.truncate, "query")
        c_spans = self.tokenizer.spans(candidate, opts.truncate, "candidate") if candidate else None
        t1 = time.perf_counter()
        rows = [q_spans.ids] if c_spans is None else [q_spans.ids, c_spans.ids]
        ids, mask = pad_batch(rows, self.manifest.pad_token_id)
        contrib, bias = self._session.run([CONTRIBUTIONS, BIAS], {INPUT_IDS: ids, ATTENTION_MASK: mask})
        t2 = time.perf_counter()
        dims = opts.dimensions
        q_terms = text_terms(q_spans, query, contrib[0], bias[0], dims)
        c_terms = None if c_spans is None else text_terms(c_spans, candidate, contrib[1], bias[1], dims)
        result = explain(q_terms, c_terms, opts.top_pairs)
        dim = dims or self.manifest.dim
        return ExplainResult(result, query, candidate, dim, t1 - t0, t2 - t1)

    async def run_async(
        self, query: str, candidate: str, options: ExplainOptions, deadline: float | None = None
    ) -> ExplainResult:
        """`run` on the explain thread, bounded by `timeout_s`; refused at once when MAX_PENDING wait."""
        self.validate(query, candidate, options)  # cheap, and bad input never takes a queue slot
        with self._lock:
            if self._pending >= MAX_PENDING:
                raise OverloadedError(f"{MAX_PENDING} Explain calls already waiting; retry later")
            self._pending += 1
            if self._executor is None:
                self._executor = DaemonThreadPool(EXPLAIN_THREADS, "embedder-explain")
            executor = self._executor
        try:
            job = executor.submit(self._job, query, candidate, options, time.monotonic(), deadline)
        except BaseException:
            self._release(None)
            raise
        # Released when the work really ends (or is cancelled unrun), not when a caller gives up on it.
        job.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job), self.timeout_s)
        except TimeoutError:
            raise InferenceTimeoutError(f"Explain ran past inference_timeout_s={self.timeout_s}") from None

    def _job(
        self, query: str, candidate: str, options: ExplainOptions, queued: float, deadline: float | None
    ) -> ExplainResult:
        started = time.monotonic()
        if deadline is not None and started >= deadline:
            raise DeadlineExceededError("deadline passed while the Explain call waited for its turn")
        return dataclasses.replace(self.run(query, candidate, options), queue_s=started - queued)

    def _release(self, _: Any) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        """Stop the explain thread (daemon: a call still running cannot block exit)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def unsupported_message(manifest: Manifest) -> str:
    return (
        f"model {manifest.name!r} does not support Explain: its bundle has no explain graph "
        "(ModelInfo.supports_explain is false; CNN bundles exported by training/ have one)"
    )
