"""The Explain runtime: the bundle's explain graph, input checks, off-loop execution, the wire response.

Explain is an audit path, not the throughput product: it runs the bundle's separate `explain.onnx`
(the serving `model.onnx` stays exactly as fast as before) on its own daemon thread, outside the
batcher, never on the event loop. At most `MAX_PENDING` calls wait for that thread; beyond that a call
is refused at once (RESOURCE_EXHAUSTED), so audits cannot pile up behind each other or starve Embed
of cores. The math is in `explain.py`; docs/explain.md describes the decomposition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedder.bundle import Bundle, Manifest
from embedder.config import ServerConfig
from embedder.encoding import timing
from embedder.errors import (
    BundleError,
    DeadlineExceededError,
    InferenceTimeoutError,
    InvalidInputError,
    NotSupportedError,
    OverloadedError,
)
from embedder.explain import WORD, Explanation, TextAttribution, explain, text_terms
from embedder.session import ATTENTION_MASK, INPUT_IDS, OUTPUT, make_session
from embedder.tokenizer import TextTokenizer, pad_batch
from embedder.v1 import embedder_pb2 as pb
from embedder.workers import DaemonThreadPool

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


# -- the wire format ----------------------------------------------------------------------------------


def options_from(request: pb.ExplainRequest) -> ExplainOptions:
    return ExplainOptions(
        top_pairs=request.top_pairs or DEFAULT_TOP_PAIRS,
        truncate=request.truncate if request.HasField("truncate") else True,
        dimensions=request.dimensions,
    )


async def explain_response(
    explainer: Explainer | None,
    manifest: Manifest,
    request: pb.ExplainRequest,
    *,
    request_id: str,
    started: float,
    deadline: float | None,
) -> pb.ExplainResponse:
    """Answer one Explain call (NotSupportedError -> UNIMPLEMENTED when the bundle cannot explain)."""
    if explainer is None:
        raise NotSupportedError(unsupported_message(manifest))
    result = await explainer.run_async(request.query, request.candidate, options_from(request), deadline)
    return to_response(result, request_id, manifest.name, started)


def to_response(result: ExplainResult, request_id: str, model: str, started: float) -> pb.ExplainResponse:
    ex = result.explanation
    response = pb.ExplainResponse(
        request_id=request_id,
        similarity=ex.similarity,
        query=_text_proto(ex.query, result.query),
        top_pairs=[
            pb.TokenPair(query_index=i, candidate_index=j, contribution=v) for i, j, v in ex.top_pairs
        ],
        model=model,
        dim=result.dim,
    )
    if ex.candidate is not None:
        response.candidate.CopyFrom(_text_proto(ex.candidate, result.candidate))
    response.timing.CopyFrom(timing(result.tokenize_s, result.queue_s, result.inference_s, started))
    return response


def _text_proto(attr: TextAttribution, text: str) -> pb.TextAttribution:
    tokens = []
    # UTF-8 byte offsets, counted incrementally (units come in text order): O(len(text)) in all.
    char_at, byte_at = 0, 0
    for unit, value in zip(attr.units, attr.contributions.tolist(), strict=True):
        byte_start = byte_end = 0  # special tokens and the bias have no span: (0, 0) as in chars
        if unit.kind == WORD:
            byte_start = byte_at + len(text[char_at : unit.char_start].encode("utf-8"))
            byte_end = byte_start + len(text[unit.char_start : unit.char_end].encode("utf-8"))
            char_at, byte_at = unit.char_end, byte_end
        tokens.append(
            pb.TokenAttribution(
                text=unit.text,
                char_start=unit.char_start,
                char_end=unit.char_end,
                byte_start=byte_start,
                byte_end=byte_end,
                pieces=unit.pieces,
                contribution=value,
                kind=unit.kind,  # type: ignore[arg-type]
            )
        )
    return pb.TextAttribution(tokens=tokens, token_count=attr.token_count, truncated=attr.truncated)
