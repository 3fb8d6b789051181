"""The embedding pipeline behind every front end: validate -> admit -> tokenize -> batch -> infer ->
post-process. Numpy out, `embedder.errors` raised; it knows no wire format.

`EmbeddingEngine.embed` is what a front end calls; `embed_in_process` is the same pipeline without the
scheduler or the event loop (CLI `embed`, bulk jobs, benchmarks, and the tests' reference embeddings).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embedder.config import ServerConfig
from embedder.core.batch_log import BatchLog
from embedder.core.bundle import Bundle, Manifest
from embedder.core.cache import EmbeddingCache
from embedder.core.gate import ServingGate
from embedder.core.inline import InlinePolicy
from embedder.core.lanes import BULK, BULK_NICE_INCREMENT
from embedder.core.postprocess import postprocess
from embedder.core.scheduler import BatchLimits, BatchObserver, Scheduler
from embedder.core.session import SessionFactory, SessionPool
from embedder.core.tokenizer import Encoded, TextTokenizer
from embedder.core.workers import DaemonThreadPool, call_guarded
from embedder.errors import ConfigError, DeadlineExceededError, InvalidInputError
from embedder.options import RequestOptions

log = logging.getLogger(__name__)

# A tokenizer thread's job reads at most about this many characters (cost_chars): a request of many long
# texts is tokenized as a sequence of such jobs, so a small request queued behind it waits for one job,
# not for the whole request (the tokenizer pool's share of fair queuing; queue.py has the batches').
TOKENIZE_JOB_CHARS = 32_768

FloatArray = npt.NDArray[np.float32]


# What a caller may ask of the pipeline: the vector options and the cache bypass, defined once in
# embedder/options.py (a front end keeps its own wire options, e.g. the encoding, apart).
EmbedOptions = RequestOptions


@dataclass(frozen=True)
class EmbedResult:
    embeddings: FloatArray
    token_counts: list[int]
    tokenize_s: float
    queue_s: float
    inference_s: float


class EmbeddingEngine:
    """Owns the tokenizer, the inference workers and the scheduler of one served bundle."""

    def __init__(
        self,
        bundle: Bundle,
        config: ServerConfig,
        observer: BatchObserver | None = None,
        *,
        session_factory: SessionFactory | None = None,
        on_unhealthy: Callable[[], None] | None = None,
        gate: ServingGate | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        """`session_factory` is the test seam for fault injection; `on_unhealthy` is called (from any
        thread) when inference can no longer be trusted, e.g. workers keep getting stuck; `gate` is the
        server's drain state (default: this engine's own); `cache` is an embedding cache shared with
        other engines (default: one of `config.embedding_cache_mb`, or none)."""
        manifest = bundle.manifest
        if config.max_batch_tokens < manifest.max_tokens:
            raise ConfigError(
                f"max_batch_tokens ({config.max_batch_tokens}) must be >= the model's max_tokens "
                f"({manifest.max_tokens}), or a long text could never be batched"
            )
        self.bundle = bundle
        self.config = config
        self.tokenizer = TextTokenizer.from_file(
            bundle.tokenizer_path, manifest.max_tokens, manifest.pad_token_id
        )
        self.gate = gate or ServingGate()
        self.cache = cache if cache is not None else EmbeddingCache.of_mb(config.embedding_cache_mb)
        self.workers = config.resolved_workers()
        self.inline = InlinePolicy(config.inline_tokenize_max_chars, config.inline_infer_max_tokens)
        self.sessions = SessionPool(
            bundle.model_path,
            manifest.dim,
            manifest.pad_token_id,
            self.workers,
            config.intra_op_threads,
            inference_timeout_s=config.inference_timeout_s,
            session_factory=session_factory,
            on_exhausted=on_unhealthy,
            inline=self.inline,
            lanes=config.bulk_min_chars > 0,
        )
        rows = max(1, min(config.max_batch_items, config.max_batch_tokens // manifest.max_tokens))
        self.sessions.warm_up(largest=(rows, manifest.max_tokens))
        # Daemon threads: a Rust panic in the tokenizer fails its call, not the server (workers.py). Bulk
        # requests are tokenized on threads of their own at a lower priority (core/lanes.py).
        threads = config.resolved_tokenizer_threads()
        self._tokenize_pool = DaemonThreadPool(threads, "embedder-tokenize")
        self._bulk_tokenize_pool = (
            DaemonThreadPool(threads, "embedder-tokenize-bulk", BULK_NICE_INCREMENT)
            if config.bulk_min_chars > 0
            else self._tokenize_pool
        )
        limits = BatchLimits(
            max_batch_items=config.max_batch_items,
            max_batch_tokens=config.max_batch_tokens,
            max_wait_ms=config.max_wait_ms,
            max_queued_items=config.max_queued_items,
            max_concurrent_batches=self.workers,
            max_tokenizing_chars=config.max_tokenizing_chars,
            min_padding_efficiency=config.min_padding_efficiency,
            bulk_min_chars=config.bulk_min_chars,
        )
        self.batch_log = BatchLog(config.batch_log, manifest.sha256) if config.batch_log else None
        record = self.batch_log.record if self.batch_log is not None else None
        self.scheduler = Scheduler(
            self.sessions.embed_rows_async, limits, manifest.dim, observer, record=record
        )

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    def start(self) -> None:
        """Start the scheduler on the running event loop."""
        self.scheduler.start()

    def validate(self, texts: Sequence[str], options: EmbedOptions) -> None:
        """Raise `InvalidInputError` naming the field and the limit."""
        cfg = self.config
        if not texts:
            raise InvalidInputError(f"texts: empty; send 1..{cfg.max_texts_per_request} texts")
        if len(texts) > cfg.max_texts_per_request:
            raise InvalidInputError(
                f"texts: {len(texts)} texts exceed max_texts_per_request={cfg.max_texts_per_request}"
            )
        for i, text in enumerate(texts):
            if not text:
                raise InvalidInputError(
                    f"texts[{i}]: empty; each text needs 1..{cfg.max_text_chars} characters"
                )
            if len(text) > cfg.max_text_chars:
                raise InvalidInputError(
                    f"texts[{i}]: {len(text)} characters exceed max_text_chars={cfg.max_text_chars}"
                )
        self.manifest.check_dimensions(options.dimensions)

    async def embed(
        self, texts: Sequence[str], options: EmbedOptions, deadline: float | None = None
    ) -> EmbedResult:
        """Embed one request through the scheduler. `deadline` is on `time.monotonic`'s clock.

        Drain state, validation, the deadline, then admission (queue slots and the tokenizer's backlog
        reserved; OverloadedError at once if full), all before any CPU is spent on tokenizing. A caller
        that is gone before a tokenizer thread takes its texts (cancelled, or out of time) costs nothing.
        """
        self.gate.check()
        self.validate(texts, options)
        cache = self.cache if options.cache else None
        if cache is None:
            result = await self._run(texts, options.truncate, deadline)
        else:
            result = await self._run_cached(cache, texts, options.truncate, deadline)
        # Post-processing after the cache: it stores raw rows, so every option applies to a hit as to a miss.
        embeddings = postprocess(result.embeddings, options.dimensions, options.normalize)
        return dataclasses.replace(result, embeddings=embeddings)

    async def _run(self, texts: Sequence[str], truncate: bool, deadline: float | None) -> EmbedResult:
        """Admit, tokenize, batch and run `texts`: raw model rows (no post-processing)."""
        started = time.monotonic()
        _check_deadline(deadline, "before its texts were tokenized")
        cost = self.tokenizer.cost_chars(texts)
        with self.scheduler.reserve(len(texts), cost) as reservation:
            if reservation.lane != BULK and self.inline.tokenize_inline(texts):
                encoded = self._encode_inline(texts, truncate)
            else:
                pool = self._bulk_tokenize_pool if reservation.lane == BULK else self._tokenize_pool
                # Bulk threads run at a lower OS priority: holding the GIL there (the fast path's Python)
                # would hold up the event loop and interactive threads, so bulk uses `tokenizers` only.
                gil_free = reservation.lane == BULK
                encoded = await self._encode_in_pool(pool, texts, truncate, deadline, gil_free)
            reservation.tokenized()
            tokenize_s = time.monotonic() - started
            result = await reservation.submit(encoded.ids, deadline)
        return EmbedResult(
            result.embeddings, encoded.token_counts, tokenize_s, result.queue_s, result.inference_s
        )

    async def _run_cached(
        self, cache: EmbeddingCache, texts: Sequence[str], truncate: bool, deadline: float | None
    ) -> EmbedResult:
        """Raw rows from the cache where it has them, from the model for the rest (then cached)."""
        sha = self.manifest.sha256
        found = cache.get_many(sha, truncate, texts)
        missing = [i for i, entry in enumerate(found) if entry is None]
        if len(missing) == len(texts):  # nothing cached: the model's rows as they come, no copy
            result = await self._run(texts, truncate, deadline)
            cache.put_many(sha, truncate, texts, result.embeddings, result.token_counts)
            return result
        raw = np.empty((len(texts), self.manifest.dim), dtype=np.float32)
        counts = [0] * len(texts)
        result = EmbedResult(raw[:0], [], 0.0, 0.0, 0.0)
        if missing:
            miss_texts = [texts[i] for i in missing]
            result = await self._run(miss_texts, truncate, deadline)
            cache.put_many(sha, truncate, miss_texts, result.embeddings, result.token_counts)
            raw[missing] = result.embeddings
            for i, count in zip(missing, result.token_counts, strict=True):
                counts[i] = count
        for i, entry in enumerate(found):
            if entry is not None:
                raw[i] = entry.array()
                counts[i] = entry.tokens
        if not missing:  # answered without a single await: let the loop's other tasks run
            await asyncio.sleep(0)
        return EmbedResult(raw, counts, result.tokenize_s, result.queue_s, result.inference_s)

    async def _encode_in_pool(
        self,
        pool: DaemonThreadPool,
        texts: Sequence[str],
        truncate: bool,
        deadline: float | None,
        gil_free: bool = False,
    ) -> Encoded:
        """Tokenize on `pool` (the request's lane's), one job of at most ~TOKENIZE_JOB_CHARS at a time. A
        cancelled caller's next job is never submitted (and a queued one is skipped); a late one is
        refused when it starts."""
        loop = asyncio.get_running_loop()
        parts: list[Encoded] = []
        for job in self.tokenizer.jobs(texts, TOKENIZE_JOB_CHARS):
            # Truncation is judged on the whole request below, so its error names the request's index.
            parts.append(await loop.run_in_executor(pool, self._encode_in_time, job, deadline, gil_free))
        encoded = Encoded.joined(parts)
        if not truncate:
            self.tokenizer.refuse_truncated(encoded)
        return encoded

    def _encode_in_time(self, texts: Sequence[str], deadline: float | None, gil_free: bool) -> Encoded:
        """A tokenizer thread's job: nothing is spent on a caller whose deadline passed while it waited."""
        _check_deadline(deadline, "while its texts waited for the tokenizer")
        return self.tokenizer.encode(texts, fast_path=not gil_free)

    def _encode_inline(self, texts: Sequence[str], truncate: bool) -> Encoded:
        """Tokenize on the calling (event loop) thread; a Rust panic becomes an ordinary error here too."""
        return call_guarded(self.tokenizer.encode, texts, truncate)

    def embed_in_process(self, texts: Sequence[str], options: EmbedOptions | None = None) -> FloatArray:
        """Tokenize and run one batch right here, in the calling thread (no scheduler, no event loop)."""
        opts = options or EmbedOptions()
        self.validate(texts, opts)
        encoded = self.tokenizer.encode(texts, opts.truncate)
        return postprocess(self.sessions.embed_rows(encoded.ids), opts.dimensions, opts.normalize)

    async def close(self) -> None:
        await self.scheduler.close()
        self.close_sync()

    def close_sync(self) -> None:
        """Release the thread pools and sessions: after the scheduler in `close`, or alone when no event
        loop ever ran (CLI `embed`, benchmarks)."""
        for pool in {self._tokenize_pool, self._bulk_tokenize_pool}:
            pool.shutdown(wait=False, cancel_futures=True)
        self.sessions.close()
        if self.batch_log is not None:
            self.batch_log.close()


def _check_deadline(deadline: float | None, when: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceededError(f"deadline passed {when}")
