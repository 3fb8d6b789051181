"""Reusable gRPC load generator: closed-loop (N concurrent callers) and open-loop (Poisson arrivals).

Drives a real server over gRPC exactly as the ranking pipeline would and reports throughput and latency
percentiles. Item texts are 20-40 word texts made by concatenating STS-B sentences.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc

STSB_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-train.csv"


def item_texts(
    n: int, seed: int = 0, path: Path = STSB_TRAIN, words: tuple[int, int] = (20, 40)
) -> list[str]:
    """`n` item-like texts of 20-40 words, each a run of STS-B sentences cut to a random length."""
    with path.open(encoding="utf-8") as fh:
        rows = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        sentences = [s for row in rows if len(row) >= 7 for s in (row[5], row[6])]
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        target = rng.randint(*words)
        picked: list[str] = []
        while len(picked) < target:
            picked += rng.choice(sentences).split()
        texts.append(" ".join(picked[:target]))
    return texts


def batches(texts: Sequence[str], size: int) -> list[list[str]]:
    return [list(texts[i : i + size]) for i in range(0, len(texts) - size + 1, size)]


@dataclass(frozen=True)
class LoadResult:
    mode: str
    concurrency: int
    requests: int
    items: int
    errors: int
    seconds: float
    items_per_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    mode: str, concurrency: int, latencies_s: list[float], *, items: int, errors: int, seconds: float
) -> LoadResult:
    lat = np.asarray(latencies_s or [0.0]) * 1000.0
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return LoadResult(
        mode=mode,
        concurrency=concurrency,
        requests=len(latencies_s),
        items=items,
        errors=errors,
        seconds=round(seconds, 3),
        items_per_s=round(items / seconds, 1) if seconds else 0.0,
        requests_per_s=round(len(latencies_s) / seconds, 1) if seconds else 0.0,
        p50_ms=round(float(p50), 3),
        p90_ms=round(float(p90), 3),
        p99_ms=round(float(p99), 3),
        mean_ms=round(float(lat.mean()), 3),
    )


async def _closed_loop(
    address: str, requests: Sequence[list[str]], concurrency: int, duration_s: float, warmup_s: float
) -> LoadResult:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EmbedderStub(channel)  # type: ignore[no-untyped-call]
        messages = [pb.EmbedRequest(texts=texts) for texts in requests]
        feed = itertools.cycle(messages)
        latencies: list[float] = []
        counts = {"items": 0, "errors": 0}
        measuring = False
        stop_at = time.monotonic() + warmup_s + duration_s

        async def caller() -> None:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    resp = await stub.Embed(next(feed), timeout=30)
                    np.frombuffer(resp.embeddings, dtype="<f4")  # what a real caller does with the bytes
                except grpc.RpcError:
                    if measuring:
                        counts["errors"] += 1
                    continue
                if measuring:
                    latencies.append(time.perf_counter() - t0)
                    counts["items"] += resp.count

        tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(warmup_s)
        measuring = True
        t_start = time.monotonic()
        await asyncio.gather(*tasks)
        seconds = time.monotonic() - t_start
    return summarize(
        "closed", concurrency, latencies, items=counts["items"], errors=counts["errors"], seconds=seconds
    )


def closed_loop(
    address: str,
    requests: Sequence[list[str]],
    concurrency: int,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
) -> LoadResult:
    """`concurrency` callers, each sending its next request as soon as the last one returns."""
    return asyncio.run(_closed_loop(address, requests, concurrency, duration_s, warmup_s))


async def _open_loop(
    address: str, requests: Sequence[list[str]], rate_per_s: float, duration_s: float
) -> LoadResult:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EmbedderStub(channel)  # type: ignore[no-untyped-call]
        feed = itertools.cycle([pb.EmbedRequest(texts=t) for t in requests])
        rng = random.Random(0)
        latencies: list[float] = []
        counts = {"items": 0, "errors": 0}

        async def one(message: pb.EmbedRequest) -> None:
            t0 = time.perf_counter()
            try:
                resp = await stub.Embed(message, timeout=30)
            except grpc.RpcError:
                counts["errors"] += 1
                return
            latencies.append(time.perf_counter() - t0)
            counts["items"] += resp.count

        tasks = []
        t_start = time.monotonic()
        next_at = t_start
        while next_at < t_start + duration_s:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            tasks.append(asyncio.create_task(one(next(feed))))
            next_at += rng.expovariate(rate_per_s)
        await asyncio.gather(*tasks)
        seconds = time.monotonic() - t_start
    return summarize(
        f"open@{rate_per_s:g}/s",
        0,
        latencies,
        items=counts["items"],
        errors=counts["errors"],
        seconds=seconds,
    )


def open_loop(
    address: str, requests: Sequence[list[str]], rate_per_s: float, duration_s: float = 5.0
) -> LoadResult:
    """Requests arrive as a Poisson process at `rate_per_s`, whether or not earlier ones finished."""
    return asyncio.run(_open_loop(address, requests, rate_per_s, duration_s))


def single_caller_latency(
    address: str, texts: Sequence[str], calls: int = 2000, warmup: int = 100
) -> LoadResult:
    """One caller, one text per call, blocking stub: the latency a lone ranking request sees."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.EmbedderStub(channel)  # type: ignore[no-untyped-call]
        messages = [pb.EmbedRequest(texts=[t]) for t in texts]
        for i in range(warmup):
            stub.Embed(messages[i % len(messages)], timeout=30)
        latencies = []
        t_start = time.monotonic()
        for i in range(calls):
            t0 = time.perf_counter()
            stub.Embed(messages[i % len(messages)], timeout=30)
            latencies.append(time.perf_counter() - t0)
        seconds = time.monotonic() - t_start
    return summarize("single", 1, latencies, items=calls, errors=0, seconds=seconds)
