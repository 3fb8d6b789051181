"""Mode (b), the in-process runtime: tokenizer + dynamic batcher + ONNX workers, no gRPC.

The same `EmbeddingEngine` the server runs, with the server's default config, driven by N concurrent
asyncio callers in this process (closed loop). Comparing it with mode (c) isolates what gRPC, protobuf and
the client cost: the serving efficiency (c) / (b).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from benchmarks.loadgen import LoadResult, Window, run_closed
from embedder.config import load_config
from embedder.core.bundle import load_bundle
from embedder.core.engine import EmbeddingEngine, EmbedOptions


class PaddingTally:
    """The scheduler's `BatchObserver`, keeping only what the padding efficiency needs."""

    def __init__(self) -> None:
        self.real_tokens = 0
        self.padded_tokens = 0

    def observe_batch(
        self, items: int, padded_tokens: int, real_tokens: int, inference_s: float, lane: str
    ) -> None:
        self.real_tokens += real_tokens
        self.padded_tokens += padded_tokens

    def set_queued_items(self, items: int) -> None:
        pass

    def observe_dropped(self, items: int, reason: str) -> None:
        pass

    def observe_failed_batch(self, items: int, reason: str) -> None:
        pass

    def take(self) -> float | None:
        """Real / padded tokens of the batches since the last call (None if none ran)."""
        eff = self.real_tokens / self.padded_tokens if self.padded_tokens else None
        self.real_tokens = self.padded_tokens = 0
        return eff


def make_engine(bundle_dir: Path, observer: PaddingTally | None = None) -> EmbeddingEngine:
    """An engine with the server's defaults (environment ignored, as for the server subprocesses), but
    no embedding cache: the rounds repeat the same texts, and the benchmark measures the runtime and the
    model (`streamrec-bench cache` measures the cache)."""
    config = load_config({"bundle": str(bundle_dir), "embedding_cache_mb": 0}, env={})
    return EmbeddingEngine(load_bundle(bundle_dir), config, observer)


async def closed_loop_engine(
    engine: EmbeddingEngine,
    requests: Sequence[list[str]],
    concurrency: int,
    window: Window,
) -> LoadResult:
    """`concurrency` callers awaiting `engine.embed` back to back (see `loadgen.run_closed`); the CPU per
    item is this whole process's. The engine must have been started (`engine.start()`) on this loop."""
    options = EmbedOptions()

    async def call(k: int) -> int:
        texts = requests[k % len(requests)]
        await engine.embed(texts, options)
        return len(texts)

    return await run_closed(call, concurrency, window, mode="in-process", cpu_pid=os.getpid())
