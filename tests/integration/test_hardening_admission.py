"""Tokenizing is admitted work (issue 14, defect 2): it counts against a bound before it starts, and a
caller out of time costs no tokenizing. Two callers with 0.5 s deadlines sending 512 long texts used to
keep the tokenizer busy for seconds (an unrelated one-text call went from 5 ms to 14.8 s) while nothing
was refused. Real server, the tokenizer held at a gate so what waits for it is deterministic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from embedder.core.engine import EmbeddingEngine, EmbedOptions
from embedder.core.tokenizer import Encoded
from embedder.errors import DeadlineExceededError
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.hardening import wait_until
from tests.support import ServerThread

LONG = ["streaming music " * 40] * 8  # 640 characters each, 5,120 in all: tokenized in the pool


class GatedTokenizer:
    """Wraps an engine's tokenizer: every encode waits at `open` and records the texts it was given."""

    def __init__(self, engine: EmbeddingEngine) -> None:
        self.open = threading.Event()
        self.entered = threading.Semaphore(0)
        self.seen: list[str] = []
        self.calls: list[list[str]] = []  # the texts of each encode call, in order
        self._encode = engine.tokenizer.encode
        engine.tokenizer.encode = self.encode  # type: ignore[method-assign]

    def encode(self, texts: Sequence[str], truncate: bool = True, fast_path: bool = True) -> Encoded:
        self.seen += texts
        self.calls.append(list(texts))
        self.entered.release()
        self.open.wait(30)
        return self._encode(texts, truncate, fast_path=fast_path)


@pytest.fixture
def gated(start_server: Callable[..., ServerThread]) -> Iterator[tuple[ServerThread, GatedTokenizer]]:
    srv = start_server(tokenizer_threads=1, inline_tokenize_max_chars=0, max_tokenizing_chars=8000)
    gate = GatedTokenizer(srv.running.engine)
    yield srv, gate
    gate.open.set()


def test_the_tokenizer_backlog_is_bounded_before_any_tokenizing(
    gated: tuple[ServerThread, GatedTokenizer],
) -> None:
    srv, gate = gated
    with grpc.insecure_channel(srv.address) as ch, ThreadPoolExecutor(2) as pool:
        stub = pb_grpc.EmbedderStub(ch)
        first = pool.submit(stub.Embed, pb.EmbedRequest(texts=LONG), timeout=30)
        assert gate.entered.acquire(timeout=10)  # 5,120 characters being tokenized, of 8,000 allowed
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(texts=[*LONG, "tail"]), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "tokenizer busy" in info.value.details()  # type: ignore[attr-defined]
        assert "tail" not in gate.seen  # refused before any work on it
        gate.open.set()
        assert first.result(timeout=30).count == len(LONG)
        assert stub.Embed(pb.EmbedRequest(texts=[*LONG, "tail"]), timeout=10).count == len(LONG) + 1


def test_a_caller_out_of_time_costs_no_tokenizing(gated: tuple[ServerThread, GatedTokenizer]) -> None:
    srv, gate = gated
    engine = srv.running.engine
    gate.open.set()
    late = srv.submit(engine.embed(["too late for this"] * 300, EmbedOptions(), time.monotonic() - 1))
    with pytest.raises(DeadlineExceededError, match="deadline passed before its texts were tokenized"):
        late.result(timeout=10)
    gate.open.clear()
    with grpc.insecure_channel(srv.address) as ch, ThreadPoolExecutor(2) as pool:
        stub = pb_grpc.EmbedderStub(ch)
        first = pool.submit(stub.Embed, pb.EmbedRequest(texts=LONG), timeout=30)
        assert gate.entered.acquire(timeout=10)  # the only tokenizer thread is busy
        waiting = pool.submit(stub.Embed, pb.EmbedRequest(texts=["waits and gives up"] * 40), timeout=0.5)
        with pytest.raises(grpc.RpcError) as info:
            waiting.result(timeout=10)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        wait_until(lambda: srv.running.engine.scheduler._admission.arriving == 1, what="the caller gone")
        gate.open.set()
        assert first.result(timeout=30).count == len(LONG)
    assert "too late for this" not in gate.seen and "waits and gives up" not in gate.seen


def test_a_small_request_is_tokenized_between_the_jobs_of_a_large_one(
    start_server: Callable[..., ServerThread],
) -> None:
    srv = start_server(tokenizer_threads=1, inline_tokenize_max_chars=0, max_tokenizing_chars=200_000)
    gate = GatedTokenizer(srv.running.engine)
    large = LONG * 12  # 61,440 characters: two tokenizer jobs of at most TOKENIZE_JOB_CHARS
    try:
        with grpc.insecure_channel(srv.address) as ch, ThreadPoolExecutor(2) as pool:
            stub = pb_grpc.EmbedderStub(ch)
            first = pool.submit(stub.Embed, pb.EmbedRequest(texts=large), timeout=30)
            assert gate.entered.acquire(timeout=10)  # its first job holds the only tokenizer thread
            small = pool.submit(stub.Embed, pb.EmbedRequest(texts=["a small request"]), timeout=30)
            wait_until(lambda: srv.running.engine.scheduler._admission.arriving == 2, what="both admitted")
            time.sleep(0.2)  # the small request's job reaches the pool's queue
            gate.open.set()
            assert first.result(timeout=30).count == len(large)
            assert small.result(timeout=30).count == 1
    finally:
        gate.open.set()
    # A FIFO of whole requests would run the small one after all of the large one.
    sizes = [len(call) for call in gate.calls]
    assert sizes == [sizes[0], 1, len(large) - sizes[0]] and gate.calls[1] == ["a small request"]
