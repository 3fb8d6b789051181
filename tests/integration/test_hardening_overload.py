"""Overload: beyond the queue bound a call is refused at once (RESOURCE_EXHAUSTED, measured), and a crowd
of concurrent callers gets only OK or RESOURCE_EXHAUSTED, none hangs, server RSS stays bounded.
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder.core.bundle import Bundle
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.hardening import (
    Faults,
    FaultServer,
    code_of,
    health_status,
    percentile,
    sample,
    server_process,
    tally,
    wait_until,
)
from tests.support import ServerThread, make_config, sample_texts

REJECT_S = 0.050
CALLERS = 4
REFUSED_CALLS = 400


def _refused_in(stub: pb_grpc.EmbedderStub) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        stub.Embed(pb.EmbedRequest(texts=["one more"]), timeout=5)
        return "OK", time.perf_counter() - started
    except grpc.RpcError as exc:
        return code_of(exc), time.perf_counter() - started


def _served_within(url: str, bound_s: float) -> float:
    """Embed calls the server finished within `bound_s` (handler start to status), from its histogram."""
    return sample(url, "streamrec_embedder_request_latency_seconds_bucket", method="Embed", le=str(bound_s))


def test_beyond_the_queue_bound_calls_are_refused_within_50ms(bundle: Bundle) -> None:
    """Measured as a caller sees it, by a few callers, while the only worker is held and the queue full.

    Where the time went in an earlier version (16 callers, p99 ~200 ms on a busy machine): the server
    runs in this process, so the client threads share its GIL, and (1) with 16 closed-loop callers the
    latency is the test's own queueing (callers / refusals per second: ~10 ms p50) while the server's
    handler takes ~0.3 ms per refusal; (2) the ~0.23 s outliers were full (generation 2) garbage
    collections of this process's heap, which holds torch from the bundle fixture: 200-330 ms each,
    stalling every thread at once. `serve()` freezes its start-up heap (`gc.freeze()`), so the test does
    the same. The median and the 95th percentile stay robust to a scheduler stall of this niced process
    on a busy machine; the server-side histogram checks every single refusal.
    """
    faults = Faults()
    # min_padding_efficiency=0: the first request (8 texts of mixed lengths) leaves the queue as one batch.
    config = make_config(workers=1, max_queued_items=32, max_texts_per_request=8, min_padding_efficiency=0.0)
    srv = FaultServer(bundle, config, faults)
    faults.open.clear()  # after the warm-up: the only worker now blocks until the test opens the gate
    try:
        with grpc.insecure_channel(srv.address) as ch, ThreadPoolExecutor(8) as pool:
            stub = pb_grpc.EmbedderStub(ch)
            first = pool.submit(stub.Embed, pb.EmbedRequest(texts=sample_texts(8, seed=1)), timeout=60)
            assert faults.waiting.acquire(timeout=10)  # taken by the worker, which is now blocked
            accepted = [
                pool.submit(stub.Embed, pb.EmbedRequest(texts=sample_texts(8, seed=i)), timeout=60)
                for i in range(4)
            ]
            queued = "streamrec_embedder_queue_items"
            wait_until(lambda: sample(srv.metrics_url, queued) == 32, what="a full queue")
            within_before = _served_within(srv.metrics_url, REJECT_S)
            gc.freeze()  # as `serve()` does after start-up (see the docstring)
            try:
                with ThreadPoolExecutor(CALLERS) as callers:
                    outcomes = list(callers.map(lambda _: _refused_in(stub), range(REFUSED_CALLS)))
            finally:
                gc.unfreeze()
            server_fast = _served_within(srv.metrics_url, REJECT_S) - within_before
            faults.open.set()
            assert [f.result(timeout=30).count for f in [first, *accepted]] == [8] * 5
    finally:
        faults.open.set()
        srv.stop()
    assert tally([c for c, _ in outcomes]) == {"RESOURCE_EXHAUSTED": REFUSED_CALLS}
    latencies = [s for _, s in outcomes]
    p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
    print(
        f"\nrejection latency seen by {CALLERS} concurrent callers, {REFUSED_CALLS} calls: "
        f"p50 {p50 * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, "
        f"max {max(latencies) * 1e3:.2f} ms; {sum(s > REJECT_S for s in latencies)} over 50 ms; "
        f"server-side within 50 ms: {server_fast:.0f}/{REFUSED_CALLS}"
    )
    assert server_fast == REFUSED_CALLS  # every refusal left the handler within 50 ms
    assert p50 < REJECT_S / 5, latencies
    assert p95 < REJECT_S, latencies


def test_concurrent_rpc_cap_refuses_extra_calls(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(max_concurrent_rpcs=3)
    gate = threading.Event()

    def held_open() -> Iterator[pb.EmbedRequest]:
        gate.wait(30)
        yield from ()

    with grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.EmbedderStub(ch)
        streams = [stub.EmbedStream(held_open(), timeout=30) for _ in range(3)]
        wait_until(lambda: all(s.is_active() for s in streams), what="open streams")
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(texts=["one too many"]), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        for stream in streams:
            assert list(stream) == []
        assert stub.Embed(pb.EmbedRequest(texts=["room again"]), timeout=5).count == 1


async def _caller(
    stubs: list[pb_grpc.EmbedderStub], texts: list[str], until: float, out: list[tuple[str, float]]
) -> None:
    rng = random.Random(len(out))
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            await rng.choice(stubs).Embed(pb.EmbedRequest(texts=rng.sample(texts, 4)), timeout=20)
            code = "OK"
        except grpc.RpcError as exc:
            code = code_of(exc)
        out.append((code, time.perf_counter() - started))
        if code != "OK":
            await asyncio.sleep(rng.uniform(0.0, 0.02))  # a polite client backs off a little


async def _crowd(port: int, callers: int, duration_s: float) -> tuple[list[tuple[str, float]], int]:
    texts = sample_texts(256, seed=7)
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    stubs = [pb_grpc.EmbedderStub(ch) for ch in channels]
    out: list[tuple[str, float]] = []
    until = time.monotonic() + duration_s
    tasks = [asyncio.create_task(_caller(stubs, texts, until, out)) for _ in range(callers)]
    _done, pending = await asyncio.wait(tasks, timeout=duration_s + 30)
    for task in pending:
        task.cancel()
    for ch in channels:
        await ch.close()
    return out, len(pending)


def _sample_rss(pid: int, stop: threading.Event, rss: list[int]) -> None:
    proc = psutil.Process(pid)
    while not stop.wait(0.25):
        rss.append(proc.memory_info().rss)


def run_crowd(bundle: Bundle, callers: int, duration_s: float) -> None:
    # A small queue bound: overload must happen even when this (niced) client process is slow.
    flags = ["--max-queued-items", "64", "--max-texts-per-request", "64", "--grace-period-s", "5"]
    with server_process(bundle, *flags) as (proc, port, _lines):
        rss: list[int] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, stop, rss), daemon=True)
        sampler.start()
        started = time.monotonic()
        outcomes, hung = asyncio.run(_crowd(port, callers, duration_s))
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join()
        assert proc.poll() is None  # still up
    codes = tally([c for c, _ in outcomes])
    rejected = [s for c, s in outcomes if c == "RESOURCE_EXHAUSTED"]
    ok = [s for c, s in outcomes if c == "OK"]
    warm = rss[min(len(rss) - 1, 4)]  # after ~1 s of load
    print(
        f"\n{callers} callers x {duration_s:.0f}s: {len(outcomes)} calls in {elapsed:.1f}s, {codes}; "
        f"OK p50 {percentile(ok, 50) * 1e3:.1f} ms p99 {percentile(ok, 99) * 1e3:.1f} ms; "
        f"rejection (seen through the crowd's own event loop) p50 {percentile(rejected, 50) * 1e3:.1f} ms "
        f"p99 {percentile(rejected, 99) * 1e3:.1f} ms; "
        f"RSS at 1 s {warm / 2**20:.0f} MiB, peak {max(rss) / 2**20:.0f} MiB"
    )
    assert hung == 0
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes.get("OK", 0) > 0 and codes.get("RESOURCE_EXHAUSTED", 0) > 0, codes
    assert max(rss) < warm * 1.5, (warm, max(rss))


def test_500_callers_short(bundle: Bundle) -> None:
    run_crowd(bundle, 500, 8.0)


@pytest.mark.slow
def test_500_callers_30s(bundle: Bundle) -> None:
    run_crowd(bundle, 500, 30.0)


def test_anonymous_watch_streams_cannot_starve_keyed_calls_or_health(
    start_server: Callable[..., ServerThread],
) -> None:
    """Issue 14, defect 1: idle health Watch streams (no API key needed) filled gRPC's global
    `max_concurrent_rpcs`, after which keyed Embed calls and health Check got RESOURCE_EXHAUSTED, and none
    of it was counted. Watch streams now have their own bound; the rest keeps its capacity."""
    srv = start_server(max_concurrent_rpcs=16, max_health_watch_streams=8, api_keys="the-key")
    keyed = [("authorization", "Bearer the-key")]
    watchers, refused_watches = [], 0
    with grpc.insecure_channel(srv.address) as anonymous, grpc.insecure_channel(srv.address) as ch:
        health = health_pb2_grpc.HealthStub(anonymous)
        for _ in range(24):  # more than max_concurrent_rpcs: the landed server refused everything after
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60)
            try:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
                watchers.append(watch)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                assert "open health Watch streams (limit 8)" in exc.details()  # type: ignore[attr-defined]
                refused_watches += 1
        assert (len(watchers), refused_watches) == (8, 16)
        stub = pb_grpc.EmbedderStub(ch)
        for _ in range(20):  # keyed calls keep their capacity, health its answer
            assert stub.Embed(pb.EmbedRequest(texts=["keyed"]), timeout=10, metadata=keyed).count == 1
            assert health_status(ch) == "SERVING"
        requests = "streamrec_embedder_requests_total"
        assert sample(srv.metrics_url, requests, method="Watch", code="RESOURCE_EXHAUSTED") == 16
        assert sample(srv.metrics_url, "streamrec_embedder_open_calls", lane="watch") == 8
        for watch in watchers:
            watch.cancel()
        wait_until(lambda: sample(srv.metrics_url, "streamrec_embedder_open_calls", lane="watch") == 0)
