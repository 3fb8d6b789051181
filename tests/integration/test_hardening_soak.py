"""Soak (slow; `make test-long`): after a warm-up that serves every kind of request at its largest, 60 s
of mixed load on a server subprocess — unary and stream calls of every size and option, bad requests,
short deadlines, cancellations, bursts beyond the queue bound. The server's RSS must grow by less than
10% over the 60 s; every call gets an expected answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import psutil
import pytest

from embedder.core.bundle import Bundle
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.hardening import code_of, server_process
from tests.support import sample_texts

SOAK_S = 60.0
WINDOW_S = 5.0  # RSS is the median over this long at each end
MAX_RSS_GROWTH = 0.10
CALLERS = 24
EXPECTED = {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED"}

Action = Callable[[pb_grpc.EmbedderStub, random.Random, list[str]], Coroutine[Any, Any, None]]


async def _embed(stub: pb_grpc.EmbedderStub, rng: random.Random, texts: list[str]) -> None:
    request = pb.EmbedRequest(
        texts=rng.sample(texts, rng.choice([1, 4, 16, 64])),
        encoding=rng.choice([0, 1, 2]),  # type: ignore[arg-type]
        dimensions=rng.choice([0, 64, 128]),
        normalize=rng.random() < 0.8,
    )
    await stub.Embed(request, timeout=30)


async def _stream(stub: pb_grpc.EmbedderStub, rng: random.Random, texts: list[str]) -> None:
    messages = [
        pb.EmbedRequest(texts=rng.sample(texts, 8), request_id=str(i)) for i in range(rng.randint(1, 20))
    ]
    async for response in stub.EmbedStream(iter(messages), timeout=30):
        if response.HasField("error") and response.error.code != grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]:
            raise AssertionError(response.error)


async def _invalid(stub: pb_grpc.EmbedderStub, rng: random.Random, texts: list[str]) -> None:
    bad = rng.choice(
        [pb.EmbedRequest(), pb.EmbedRequest(texts=["x"], dimensions=7), pb.EmbedRequest(texts=[""])]
    )
    await stub.Embed(bad, timeout=30)


async def _impatient(stub: pb_grpc.EmbedderStub, rng: random.Random, texts: list[str]) -> None:
    """A deadline too short for 256 texts, or a caller that gives up half way."""
    call = stub.Embed(pb.EmbedRequest(texts=rng.choices(texts, k=256)), timeout=rng.choice([0.005, 0.05, 30]))
    if rng.random() < 0.5:
        await asyncio.sleep(rng.uniform(0, 0.02))
        call.cancel()
    await call


async def _info(stub: pb_grpc.EmbedderStub, rng: random.Random, texts: list[str]) -> None:
    await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)


ACTIONS: list[tuple[Action, int]] = [
    (_embed, 60),
    (_stream, 15),
    (_invalid, 10),
    (_impatient, 10),
    (_info, 5),
]


async def _caller(stub: pb_grpc.EmbedderStub, seed: int, until: float, codes: Counter[str]) -> None:
    rng = random.Random(seed)
    texts = sample_texts(256, seed=seed)
    actions, weights = zip(*ACTIONS, strict=True)
    while time.monotonic() < until:
        action = rng.choices(actions, weights)[0]
        try:
            await action(stub, rng, texts)
            codes["OK"] += 1
        except (grpc.RpcError, asyncio.CancelledError) as exc:
            codes[code_of(exc) if isinstance(exc, grpc.RpcError) else "CANCELLED"] += 1


async def _warm_up(stub: pb_grpc.EmbedderStub) -> None:
    """Every kind of request at its largest, concurrently, so batches reach their size limits and the
    allocators their working size before the soak is measured."""
    texts = sample_texts(256, seed=99)
    for _ in range(2):
        for encoding in (0, 1, 2):
            for dims in (0, 64, 128):
                request = pb.EmbedRequest(texts=texts, encoding=encoding, dimensions=dims)  # type: ignore[arg-type]
                await stub.Embed(request, timeout=120)
        # Two at once fill the queue exactly (max_queued_items 512): the largest batches form.
        await asyncio.gather(*(stub.Embed(pb.EmbedRequest(texts=texts), timeout=120) for _ in range(2)))
        messages = [pb.EmbedRequest(texts=texts[i : i + 64]) for i in range(0, 256, 64)]
        assert len([r async for r in stub.EmbedStream(iter(messages), timeout=120)]) == 4
        with contextlib.suppress(grpc.RpcError):
            await stub.Embed(pb.EmbedRequest(texts=[""]), timeout=120)


async def _load(port: int, duration_s: float, warmed: list[float]) -> Counter[str]:
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.EmbedderStub(ch)
        await _warm_up(stub)
        warmed.append(time.monotonic())
        until = time.monotonic() + duration_s
        tasks = [asyncio.create_task(_caller(stub, seed, until, codes)) for seed in range(CALLERS)]
        _done, pending = await asyncio.wait(tasks, timeout=duration_s + 60)
        assert not pending, f"{len(pending)} callers hung"
    return codes


def _sample_rss(pid: int, stop: threading.Event, out: list[tuple[float, int]]) -> None:
    proc = psutil.Process(pid)
    while not stop.wait(0.5):
        with contextlib.suppress(psutil.Error):
            out.append((time.monotonic(), proc.memory_info().rss))


@pytest.mark.slow
def test_soak_rss_stays_flat_under_mixed_load(bundle: Bundle) -> None:
    flags = ["--max-queued-items", "512", "--max-texts-per-request", "256", "--grace-period-s", "10"]
    with server_process(bundle, *flags) as (proc, port, _lines):
        rss: list[tuple[float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, stop, rss), daemon=True)
        sampler.start()
        warmed: list[float] = []
        codes = asyncio.run(_load(port, SOAK_S, warmed))
        ended = time.monotonic()
        stop.set()
        sampler.join()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    # Medians at each end: one sample can catch a transient batch buffer.
    warm = statistics.median(r for t, r in rss if warmed[0] <= t < warmed[0] + WINDOW_S)
    final = statistics.median(r for t, r in rss if t >= ended - WINDOW_S)
    peak = max(r for t, r in rss if t >= warmed[0])
    growth = final / warm - 1
    print(
        f"\nsoak {SOAK_S:.0f}s after warm-up, {CALLERS} callers: {sum(codes.values())} calls "
        f"{dict(codes.most_common())}; RSS after warm-up {warm / 2**20:.1f} MiB, at the end "
        f"{final / 2**20:.1f} MiB (growth {growth:+.1%}), peak {peak / 2**20:.1f} MiB"
    )
    assert set(codes) <= EXPECTED, codes
    assert codes["OK"] > 0
    assert growth < MAX_RSS_GROWTH, (warm, final)
