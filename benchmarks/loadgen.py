"""Reusable gRPC load generator: closed-loop (N concurrent callers) and open-loop (Poisson arrivals).

Drives a real server over gRPC exactly as the ranking pipeline would and reports throughput and latency
percentiles. Item texts are 20-40 word texts made by concatenating STS-B sentences.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

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
    p95_ms: float
    p99_ms: float
    mean_ms: float
    # Latency at every percentile 0..100 (101 values): enough for a CDF plot, small enough for JSON.
    quantiles_ms: list[float] = field(default_factory=list)
    # CPU ms per item of the process named by `cpu_pid` (the server, or this process), if asked.
    cpu_ms_per_item: float | None = None
    # CPU ms per item of this (the load-generating) process, when `cpu_pid` is another process.
    client_cpu_ms_per_item: float | None = None
    # Median of the server's own time per call (our responses' `timing.total_us`: from the handler's
    # start to its answer), when the server reports it; the rest of `p50_ms` is spent in gRPC. Taken over
    # every call of the run, the warm-up's included (`p50_ms` is over the window only).
    server_p50_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    mode: str, concurrency: int, latencies_s: list[float], *, items: int, errors: int, seconds: float
) -> LoadResult:
    lat = np.asarray(latencies_s or [0.0]) * 1000.0
    p50, p90, p95, p99 = np.percentile(lat, [50, 90, 95, 99])
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
        p95_ms=round(float(p95), 3),
        p99_ms=round(float(p99), 3),
        mean_ms=round(float(lat.mean()), 3),
        quantiles_ms=[round(float(q), 3) for q in np.percentile(lat, np.arange(101))],
    )


@dataclass(frozen=True)
class Window:
    """What a closed-loop run measures, after a warm-up of at least `warmup_s` that lasts until every
    caller has completed one request (on a slow model with many callers that takes seconds).

    The window runs from one completion to another, at least `seconds` long and holding at least
    `min_requests` completions, at most `max_seconds`. Time alone is not enough: a 1-second window
    on MiniLM with 64 callers holds one or two requests, and the rate would be mostly rounding.
    """

    seconds: float = 5.0
    warmup_s: float = 1.0
    min_requests: int = 1
    max_seconds: float = 60.0
    max_warmup_s: float = 60.0


class _Completions:
    """Completions of a closed loop, and when every caller has finished one request (steady state)."""

    POLL_S = 0.005

    def __init__(self, concurrency: int) -> None:
        self.pending = set(range(concurrency))
        self.done: list[tuple[float, float, int]] = []  # (finished at, latency, items)
        self.failed: list[float] = []

    async def steady(self, min_s: float, max_s: float) -> None:
        """Wait `min_s`, then until every caller completed a request (or `max_s` passed)."""
        await asyncio.sleep(min_s)
        deadline = time.perf_counter() + max(0.0, max_s - min_s)
        while self.pending and time.perf_counter() < deadline:
            await asyncio.sleep(self.POLL_S)

    async def window(self, spec: Window) -> tuple[float, float]:
        """[start, end) of the measured window.

        Replies come in bursts (a batch answers several requests at once), so the window must not
        start and end on the same phase of a burst: it opens on the first reply after the warm-up (the
        first of a burst) and closes on the first reply at least `seconds` later once it holds
        `min_requests` replies (a random phase of a burst), counting [start, end). If `max_seconds`
        pass first, it closes then (a random phase too). A server that sends nothing for
        `max_seconds + max_warmup_s` ends it empty (0 items/s).
        """
        first = len(self.done)
        hard_stop = time.perf_counter() + spec.max_seconds + spec.max_warmup_s
        while len(self.done) == first:
            if time.perf_counter() > hard_stop:
                return hard_stop - spec.max_seconds, time.perf_counter()
            await asyncio.sleep(self.POLL_S)
        start = self.done[first][0]
        j = first + 1
        while True:
            while j < len(self.done):
                if j - first >= spec.min_requests and self.done[j][0] - start >= spec.seconds:
                    return start, self.done[j][0]
                j += 1
            now = time.perf_counter()
            if (now - start >= spec.max_seconds and j > first + 1) or now > hard_stop:
                return start, now
            await asyncio.sleep(self.POLL_S)

    def result(self, mode: str, concurrency: int, start: float, end: float) -> LoadResult:
        inside = [(lat, n) for t, lat, n in self.done if start <= t < end]
        errors = sum(1 for t in self.failed if start <= t < end)
        items = sum(n for _, n in inside)
        return summarize(
            mode, concurrency, [lat for lat, _ in inside], items=items, errors=errors, seconds=end - start
        )


async def run_closed(
    call: Callable[[int], Awaitable[int]],
    concurrency: int,
    window: Window,
    *,
    mode: str = "closed",
    cpu_pid: int | None = None,
) -> LoadResult:
    """`concurrency` callers, each running `call(k)` (k = its k-th request; returns items) back to back,
    measured over `window` (see `Window`). At the window's end the callers are cancelled (no drain) and,
    when `cpu_pid` is given, its CPU time over the window is reported per item and the run returns
    only once that process has gone idle.
    """
    done = _Completions(concurrency)

    async def caller(i: int) -> None:
        for k in itertools.count(i, concurrency):
            t0 = time.perf_counter()
            try:
                items = await call(k)
            except Exception:  # an error reply is a measured outcome, not a crash of the benchmark
                done.failed.append(time.perf_counter())
                continue
            t1 = time.perf_counter()
            done.done.append((t1, t1 - t0, items))
            done.pending.discard(i)

    tasks = [asyncio.create_task(caller(i)) for i in range(concurrency)]
    try:
        await done.steady(window.warmup_s, window.max_warmup_s)
        cpu0, own0 = (cpu_s(cpu_pid, tree=True) if cpu_pid else 0.0), cpu_s(os.getpid())
        start, end = await done.window(window)
        cpu1, own1 = (cpu_s(cpu_pid, tree=True) if cpu_pid else 0.0), cpu_s(os.getpid())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result = done.result(mode, concurrency, start, end)
    if cpu_pid:
        if result.items:  # no items, no CPU per item (None, not CPU / 1)
            per_item = 1000.0 / result.items
            client = round((own1 - own0) * per_item, 4) if cpu_pid != os.getpid() else None
            server = round((cpu1 - cpu0) * per_item, 4)
            result = replace(result, cpu_ms_per_item=server, client_cpu_ms_per_item=client)
        await asyncio.to_thread(wait_idle, cpu_pid)
    return result


# Connections per server process when the server has several: the kernel hashes each connection to one
# process, so a few each make it unlikely that one process gets none or most of them.
CONNECTIONS_PER_PROCESS = 4


def connections_for(processes: int, callers: int) -> int:
    """Connections a load generator opens to a server of `processes` processes (1 for one process)."""
    return 1 if processes <= 1 else max(1, min(callers, CONNECTIONS_PER_PROCESS * processes))


@asynccontextmanager
async def stubs(
    address: str, connections: int = 1, stub: Callable[[grpc.aio.Channel], Any] = pb_grpc.EmbedderStub
) -> AsyncIterator[list[Any]]:
    """`connections` channels to `address` as `stub`s (default the Embedder's), each with a TCP
    connection of its own (no subchannel shared through gRPC's global pool): a server of several
    processes (`serve --processes N`) gets a connection's calls in one process, so a load generator needs
    several connections to reach them all."""
    options = [("grpc.use_local_subchannel_pool", 1)] if connections > 1 else []
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(connections)]
    try:
        yield [stub(c) for c in channels]
    finally:
        for channel in channels:
            await channel.close(None)


def send_each_once(
    address: str, requests: Sequence[list[str]], concurrency: int, connections: int = 1
) -> int:
    """Send every request once, `concurrency` at a time (e.g. to warm a server's cache); returns errors."""

    async def run() -> int:
        async with stubs(address, connections) as stub_list:
            todo = iter(requests)
            errors = 0

            async def caller(i: int) -> None:
                nonlocal errors
                stub = stub_list[i % connections]
                for texts in todo:
                    try:
                        await stub.Embed(pb.EmbedRequest(texts=texts), timeout=60)
                    except grpc.RpcError:
                        errors += 1

            await asyncio.gather(*(caller(i) for i in range(concurrency)))
            return errors

    return asyncio.run(run())


def _summed(pid: int | None, tree: bool, read: Callable[[psutil.Process], float]) -> float:
    """`read` of process `pid` (None = this process), plus of its live children if `tree` (a server of
    several processes: the supervisor's server processes); a child that exits meanwhile counts 0."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *(proc.children(recursive=True) if tree else [])]:
        try:
            total += read(p)
        except psutil.NoSuchProcess:
            continue
    return total


def cpu_s(pid: int | None = None, *, tree: bool = False) -> float:
    """User + system CPU seconds of process `pid` (None = this process); `tree`: its children's too."""
    return _summed(pid, tree, lambda p: (t := p.cpu_times()).user + t.system)


def rss_mb(pid: int) -> float:
    """Resident MiB of process `pid` and its children (a server's processes summed)."""
    return _summed(pid, True, lambda p: float(p.memory_info().rss)) / 2**20


def wait_idle(pid: int, busy_below: float = 0.15, step_s: float = 0.1, max_s: float = 15.0) -> None:
    """Return once process `pid` uses under `busy_below` of a core over `step_s` (batches cancelled
    callers left running would otherwise eat into the next measurement)."""
    deadline = time.monotonic() + max_s
    last = cpu_s(pid, tree=True)
    while time.monotonic() < deadline:
        time.sleep(step_s)
        now = cpu_s(pid, tree=True)
        if now - last < busy_below * step_s:
            return
        last = now


RPCS = ("unary", "stream")


async def _closed_loop(
    address: str,
    requests: Sequence[list[str]],
    concurrency: int,
    window: Window,
    *,
    cpu_pid: int | None,
    model: str,
    rpc: str,
    connections: int,
) -> LoadResult:
    if rpc not in RPCS:
        raise ValueError(f"rpc must be one of {RPCS}, got {rpc!r}")
    async with stubs(address, connections) as stub_list:
        messages = [pb.EmbedRequest(texts=texts, model=model) for texts in requests]
        server_us: list[int] = []
        streams: dict[int, Any] = {}  # caller -> its EmbedStream call (rpc "stream")

        async def send(k: int) -> pb.EmbedResponse:
            message = messages[k % len(messages)]
            # k runs i, i + concurrency, ... for caller i, whose calls all go on connection i mod K.
            caller = k % concurrency
            stub = stub_list[caller % connections]
            if rpc == "unary":
                return await stub.Embed(message, timeout=60)
            # One stream per caller, one request in flight on it: the same concurrency as unary calls,
            # without a new RPC per request.
            call = streams.get(caller)
            if call is None:
                call = streams[caller] = stub.EmbedStream()
            try:
                await call.write(message)
                resp = await call.read()
                if resp is grpc.aio.EOF:  # type: ignore[attr-defined]
                    raise RuntimeError("the server ended the stream")
            except BaseException:  # a broken stream is never reused: the caller's next request opens one
                streams.pop(caller).cancel()
                raise
            if resp.HasField("error"):  # EmbedStream reports a failed message in-band; the stream goes on
                raise RuntimeError(f"stream message failed: {resp.error.message}")
            return resp

        async def call(k: int) -> int:
            resp = await send(k)
            np.frombuffer(resp.embeddings, dtype="<f4")  # what a real caller does with the bytes
            if resp.timing.total_us:
                server_us.append(resp.timing.total_us)
            return int(resp.count)

        try:
            result = await run_closed(
                call,
                concurrency,
                window,
                cpu_pid=cpu_pid,
                mode="closed" if rpc == "unary" else "closed-stream",
            )
        finally:
            for stream in streams.values():
                stream.cancel()
        if server_us:
            result = replace(result, server_p50_ms=round(float(np.median(server_us)) / 1000.0, 3))
        return result


def closed_loop(
    address: str,
    requests: Sequence[list[str]],
    concurrency: int,
    window: Window,
    *,
    cpu_pid: int | None = None,
    model: str = "",
    rpc: str = "unary",
    connections: int = 1,
) -> LoadResult:
    """`concurrency` gRPC callers, each sending its next request as soon as the last one returns.

    `cpu_pid` (the server's pid): report its CPU ms per item (its children's included) and wait for it
    to go idle afterwards. `model`: EmbedRequest.model ("" = the server's default model). `rpc`: "unary"
    (one `Embed` call per request) or "stream" (each caller keeps one `EmbedStream` open and sends its
    requests on it, one at a time). `connections`: the callers share that many connections (`stubs`).
    """
    return asyncio.run(
        _closed_loop(
            address,
            requests,
            concurrency,
            window,
            cpu_pid=cpu_pid,
            model=model,
            rpc=rpc,
            connections=connections,
        )
    )


async def _open_loop(
    address: str, requests: Sequence[list[str]], rate_per_s: float, duration_s: float
) -> LoadResult:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.EmbedderStub(channel)  # type: ignore[no-untyped-call]
        feed = itertools.cycle([pb.EmbedRequest(texts=t) for t in requests])
        rng = random.Random(0)
        latencies: list[float] = []
        counts = {"items": 0, "errors": 0}

        async def one(message: pb.EmbedRequest, arrival: float) -> None:
            # Timed from the scheduled arrival, not from when this task got to run: if the client's own
            # loop falls behind, that delay is part of what a caller at this rate would see.
            try:
                resp = await stub.Embed(message, timeout=30)
            except grpc.RpcError:
                counts["errors"] += 1
                return
            latencies.append(time.monotonic() - arrival)
            counts["items"] += resp.count

        tasks = []
        t_start = time.monotonic()
        next_at = t_start
        while next_at < t_start + duration_s:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            tasks.append(asyncio.create_task(one(next(feed), next_at)))
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
    address: str,
    texts: Sequence[str],
    *,
    seconds: float = 0.0,
    min_calls: int = 2000,
    max_calls: int = 100_000,
    warmup: int = 50,
) -> LoadResult:
    """One caller, one text per call, blocking stub: the latency a lone ranking request sees.

    Runs for `seconds` and at least `min_calls` calls, at most `max_calls` (a slow model would take
    minutes for a fixed count, a fast one too few samples for a p99 in a fixed time).
    """
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.EmbedderStub(channel)  # type: ignore[no-untyped-call]
        messages = [pb.EmbedRequest(texts=[t]) for t in texts]
        for i in range(warmup):
            stub.Embed(messages[i % len(messages)], timeout=30)
        latencies: list[float] = []
        t_start = time.perf_counter()
        stop_at = t_start + seconds
        while len(latencies) < max_calls and (len(latencies) < min_calls or time.perf_counter() < stop_at):
            t0 = time.perf_counter()
            stub.Embed(messages[len(latencies) % len(messages)], timeout=30)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - t_start
    return summarize("single", 1, latencies, items=len(latencies), errors=0, seconds=elapsed)
