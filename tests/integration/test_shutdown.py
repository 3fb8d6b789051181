"""Graceful shutdown: NOT_SERVING first, new calls UNAVAILABLE, accepted calls finish, exit 0."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder.bundle import Bundle
from embedder.client import decode
from embedder.engine import EmbeddingEngine
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import ServerThread, embed_reference, sample_texts

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_drain_order(start_server: Callable[..., ServerThread], reference: EmbeddingEngine) -> None:
    # A long max_wait_ms plus a caller announced as "being tokenized" (who never comes) keep the
    # accepted call in the batch queue while the drain starts.
    srv = start_server(max_wait_ms=1000, grace_period_s=5)
    srv.loop.call_soon_threadsafe(srv.running.engine.batcher.expect_arrival)
    texts = ["accepted before the drain", "and finishes"]
    with grpc.insecure_channel(srv.address) as ch, ThreadPoolExecutor(2) as pool:
        stub = pb_grpc.EmbedderStub(ch)
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == SERVING
        accepted = pool.submit(stub.Embed, pb.EmbedRequest(texts=texts), timeout=30)
        time.sleep(0.3)
        stopping = srv.submit(srv.running.stop(5.0))
        assert next(watch).status == NOT_SERVING
        watch.cancel()
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(texts=["too late"]), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not accepted.done()  # still waiting in the batcher: the drain did not cut it off
        np.testing.assert_allclose(
            decode(accepted.result(timeout=10)), embed_reference(reference, texts), atol=1e-5
        )
        stopping.result(timeout=10)


def _wait_for_port(proc: subprocess.Popen[str], timeout_s: float = 30.0) -> int:
    found: list[int] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if m := re.search(r"serving .* on port (\d+)", line):
                found.append(int(m.group(1)))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not found:
        proc.kill()
        pytest.fail("server did not log its port")
    return found[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_and_exits_zero(bundle: Bundle, sig: signal.Signals) -> None:
    cmd = [sys.executable, "-m", "embedder.cli", "serve", "--bundle", str(bundle.path), "--host", "127.0.0.1"]
    # One worker and one text per batch make a 512-text call slow enough to be in flight at the signal.
    cmd += ["--port", "0", "--metrics-port", "-1", "--workers", "1", "--max-batch-items", "1"]
    cmd += ["--grace-period-s", "10"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        port = _wait_for_port(proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, ThreadPoolExecutor(1) as pool:
            stub = pb_grpc.EmbedderStub(ch)
            sent = time.monotonic()
            accepted = pool.submit(stub.Embed, pb.EmbedRequest(texts=sample_texts(512)), timeout=30)
            time.sleep(0.05)
            proc.send_signal(sig)
            signalled_after_s = time.monotonic() - sent
            resp = accepted.result(timeout=15)
            assert resp.count == 512
            assert resp.timing.total_us / 1e6 > signalled_after_s  # it really was in flight at the signal
            with pytest.raises(grpc.RpcError) as info:
                stub.Embed(pb.EmbedRequest(texts=["after the signal"]), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_open_stream_is_ended_with_unavailable_on_drain(start_server: Callable[..., ServerThread]) -> None:
    srv = start_server(grace_period_s=5)
    outbox: queue.Queue[pb.EmbedRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.EmbedRequest]:
        while (message := outbox.get()) is not None:
            yield message

    with grpc.insecure_channel(srv.address) as ch:
        responses = pb_grpc.EmbedderStub(ch).EmbedStream(requests(), timeout=30)
        outbox.put(pb.EmbedRequest(texts=["first"], request_id="1"))
        assert next(responses).request_id == "1"
        stopping = srv.submit(srv.running.stop(5.0))
        with pytest.raises(grpc.RpcError) as info:
            next(responses)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        outbox.put(None)
        stopping.result(timeout=10)
