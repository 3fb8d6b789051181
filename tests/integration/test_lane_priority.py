"""Priority lanes on real threads: a bulk request is tokenized and run on threads at a lower OS priority
(nice), an interactive one on threads at the server's own; both through the real engine, tokenizer and
ONNX sessions. Linux only: nice is per thread there (core/lanes.py)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine, EmbedOptions
from embedder.core.lanes import BULK_NICE_INCREMENT
from embedder.core.session import InferenceSession, make_session
from embedder.core.tokenizer import Encoded
from embedder.core.workers import DaemonThreadPool
from tests.support import make_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def own_priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_pool_lowers_its_threads_priority_and_only_theirs() -> None:
    base = own_priority()
    low, usual = DaemonThreadPool(2, "test-low", nice_increment=3), DaemonThreadPool(1, "test-usual")
    try:
        assert {low.submit(own_priority).result(timeout=5) for _ in range(4)} == {min(19, base + 3)}
        assert usual.submit(own_priority).result(timeout=5) == base
        assert own_priority() == base  # the creating thread (and so the process's other threads) kept it
    finally:
        low.shutdown(wait=True)
        usual.shutdown(wait=True)


class PriorityLog:
    """Where tokenizing and inference ran: (thread name, nice) per call."""

    def __init__(self) -> None:
        self.tokenized: list[tuple[str, int]] = []
        self.ran: list[tuple[str, int]] = []

    def session_factory(self, path: Path, intra_op_threads: int) -> InferenceSession:
        log, inner = self, make_session(path, intra_op_threads)

        class Recorded:
            def run(self, output_names: list[str], input_feed: dict[str, Any]) -> list[Any]:
                log.ran.append((threading.current_thread().name, own_priority()))
                return inner.run(output_names, input_feed)

        return Recorded()


def test_bulk_work_runs_at_a_lower_priority_and_interactive_work_at_the_servers(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = own_priority()
    log = PriorityLog()
    config = make_config(
        workers=1, bulk_min_chars=2000, inline_tokenize_max_chars=0, inline_infer_max_tokens=0
    )
    engine = EmbeddingEngine(bundle, config, session_factory=log.session_factory)
    encode = engine._encode_in_time

    def recorded(texts: Sequence[str], truncate: bool, deadline: float | None) -> Encoded:
        log.tokenized.append((threading.current_thread().name, own_priority()))
        return encode(texts, truncate, deadline)

    monkeypatch.setattr(engine, "_encode_in_time", recorded)
    interactive = ["a quiet family drama", "space documentary about the moon"]  # ~50 characters
    bulk = [f"long catalogue entry {i} " * 20 for i in range(8)]  # ~3,500 characters

    seen: list[tuple[list[tuple[str, int]], list[tuple[str, int]]]] = []

    async def body() -> None:
        engine.start()
        try:
            for texts in (interactive, bulk):
                log.tokenized.clear()
                log.ran.clear()
                await engine.embed(texts, EmbedOptions())
                seen.append((log.tokenized[:], log.ran[:]))
        finally:
            await engine.close()

    asyncio.run(body())
    (tok_i, ran_i), (tok_b, ran_b) = seen
    low = min(19, base + BULK_NICE_INCREMENT)
    assert tok_i and all(nice == base and "bulk" not in name for name, nice in tok_i), tok_i
    assert ran_i and all(nice == base and "bulk" not in name for name, nice in ran_i), ran_i
    assert tok_b and all(nice == low and "bulk" in name for name, nice in tok_b), tok_b
    assert ran_b and all(nice == low and "bulk" in name for name, nice in ran_b), ran_b
    assert engine.sessions.sessions == 2  # one worker + the interactive lane's spare


def test_a_request_of_item_texts_is_tokenized_on_the_loop_but_a_bulk_one_never_is(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline rule (core/inline.py) covers a whole request of item texts by default; a bulk request
    goes to the bulk lane's low-priority threads even when the inline knob is set above its size."""
    where: list[str] = []
    config = make_config(workers=1, bulk_min_chars=2000, inline_tokenize_max_chars=100_000)
    engine = EmbeddingEngine(bundle, config)
    encode = engine.tokenizer.encode

    def recorded(*args: Any, **kwargs: Any) -> Encoded:
        where.append(threading.current_thread().name)
        return encode(*args, **kwargs)

    monkeypatch.setattr(engine.tokenizer, "encode", recorded)
    items = [f"catalogue item {i}: a quiet family drama about a lighthouse keeper" for i in range(24)]
    bulk = [f"long catalogue entry {i} " * 20 for i in range(8)]  # ~3,500 characters: bulk here
    seen: list[list[str]] = []

    async def body() -> None:
        engine.start()
        try:
            for texts in (items, bulk):
                where.clear()
                await engine.embed(texts, EmbedOptions())
                seen.append(where[:])
        finally:
            await engine.close()

    asyncio.run(body())
    assert sum(map(len, items)) < 2000 < sum(map(len, bulk)) < 100_000
    assert seen[0] == ["MainThread"], seen[0]  # the event loop's own thread
    assert seen[1] and all("bulk" in name for name in seen[1]), seen[1]
    assert make_config().inline_tokenize_max_chars >= sum(map(len, items))  # the default covers it
