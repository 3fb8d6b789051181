"""Deadlines and cancellation: work whose caller is out of time or gone is dropped before inference and
counted in `streamrec_embedder_dropped_items_total{reason}`.

Deterministic through the fault seam: the one worker is held at a gate while the doomed request waits
in the queue; the gate opens only once the server has seen the deadline pass or the cancel arrive. The
model must never see the doomed texts (their marker token), and the metric must count every one of them.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
import pytest

from embedder.core.bundle import Bundle
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.hardening import FaultServer, fault_server, sample, token_of, wait_until
from tests.support import ServerThread

QUEUED = "streamrec_embedder_queue_items"
DROPPED = "streamrec_embedder_dropped_items_total"
REQUESTS = "streamrec_embedder_requests_total"
MARKER = "avalanche"  # one token; only the doomed texts carry it
DOOMED = [f"{MARKER} number {i}" for i in range(5)]
Held = tuple[FaultServer, pb_grpc.EmbedderStub, "Future[pb.EmbedResponse]"]


@pytest.fixture
def held(bundle: Bundle) -> Iterator[Held]:
    """A one-worker server whose worker is busy (held at the gate) with a first call."""
    with fault_server(bundle, workers=1) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.EmbedderStub(ch)
        srv.faults.open.clear()
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(stub.Embed, pb.EmbedRequest(texts=["holds the worker"]), timeout=60)
            assert srv.faults.waiting.acquire(timeout=10)
            yield srv, stub, first


def queued(srv: FaultServer, n: int) -> None:
    wait_until(lambda: sample(srv.metrics_url, QUEUED) == n, what=f"{n} queued texts")


def release_and_check(srv: FaultServer, first: Future[pb.EmbedResponse], reason: str) -> None:
    """Open the gate; the doomed texts are dropped (counted under `reason`) and never reach the model."""
    srv.faults.open.set()
    assert first.result(timeout=30).count == 1
    wait_until(lambda: sample(srv.metrics_url, DROPPED, reason=reason) == len(DOOMED), what="the drop")
    assert sample(srv.metrics_url, QUEUED) == 0
    stub = pb_grpc.EmbedderStub(grpc.insecure_channel(srv.address))
    assert stub.Embed(pb.EmbedRequest(texts=["after the drop"]), timeout=10).count == 1
    assert token_of(srv, MARKER) not in srv.faults.seen
    assert srv.faults.rows_run == 2  # the first call and the one after the drop, nothing else
    other = {"deadline", "cancelled", "failed", "shutdown"} - {reason}
    assert all(sample(srv.metrics_url, DROPPED, reason=r) == 0 for r in other)


def test_unary_deadline_passed_in_the_queue(held: Held) -> None:
    srv, stub, first = held
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(pb.EmbedRequest(texts=DOOMED), timeout=0.5)  # waits in the queue past its deadline
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    queued(srv, len(DOOMED))
    # Counted as what the caller saw (issue 14, defect 6: it used to be CANCELLED).
    wait_until(lambda: sample(srv.metrics_url, REQUESTS, method="Embed", code="DEADLINE_EXCEEDED") == 1)
    assert sample(srv.metrics_url, REQUESTS, method="Embed", code="CANCELLED") == 0
    release_and_check(srv, first, "deadline")


def test_unary_cancelled_by_the_caller(held: Held) -> None:
    srv, stub, first = held
    call = stub.Embed.future(pb.EmbedRequest(texts=DOOMED), timeout=60)
    queued(srv, len(DOOMED))
    assert call.cancel()
    wait_until(lambda: sample(srv.metrics_url, REQUESTS, method="Embed", code="CANCELLED") == 1)
    release_and_check(srv, first, "cancelled")


def _stream(
    stub: pb_grpc.EmbedderStub, timeout_s: float
) -> tuple[grpc.Future, queue.Queue[pb.EmbedRequest | None]]:  # type: ignore[type-arg]
    outbox: queue.Queue[pb.EmbedRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.EmbedRequest]:
        while (message := outbox.get()) is not None:
            yield message

    responses = stub.EmbedStream(requests(), timeout=timeout_s)
    outbox.put(pb.EmbedRequest(texts=DOOMED[:2], request_id="a"))
    outbox.put(pb.EmbedRequest(texts=DOOMED[2:], request_id="b"))
    return responses, outbox


def test_stream_cancelled_by_the_caller(held: Held) -> None:
    srv, stub, first = held
    responses, outbox = _stream(stub, 60)
    queued(srv, len(DOOMED))
    responses.cancel()  # type: ignore[attr-defined]
    outbox.put(None)
    wait_until(lambda: sample(srv.metrics_url, REQUESTS, method="EmbedStream", code="CANCELLED") == 2)
    release_and_check(srv, first, "cancelled")


def test_stream_deadline_passed_in_the_queue(held: Held) -> None:
    srv, stub, first = held
    responses, outbox = _stream(stub, 0.5)
    with pytest.raises(grpc.RpcError) as info:
        next(responses)  # type: ignore[call-overload]
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    outbox.put(None)
    queued(srv, len(DOOMED))
    done = {"method": "EmbedStream", "code": "DEADLINE_EXCEEDED"}
    wait_until(lambda: sample(srv.metrics_url, REQUESTS, **done) == 2)  # issue 14, defect 6
    assert sample(srv.metrics_url, REQUESTS, method="EmbedStream", code="CANCELLED") == 0
    release_and_check(srv, first, "deadline")


def test_a_caller_going_away_is_not_an_error_in_the_log(
    start_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14, defect 8: a stream whose caller stopped reading and then cancelled logged an ERROR
    traceback from gRPC (`ExecuteBatchError raised in core by servicer method [...EmbedStream]`) in
    most tries. Each stream here has responses waiting for the caller (its batches ran, flow control
    holds them) when it is cancelled; nothing at WARNING or above may be logged for it."""
    srv = start_server(workers=1)
    batches = "streamrec_embedder_batch_items_count"
    texts = ["a caller that stops reading"] * 64
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        for _ in range(12):
            ran = sample(srv.metrics_url, batches)
            call = stub.EmbedStream(iter([pb.EmbedRequest(texts=texts)] * 300), timeout=60)
            wait_until(lambda: sample(srv.metrics_url, batches) >= ran + 40, what="responses waiting")  # noqa: B023
            call.cancel()  # type: ignore[attr-defined]
            wait_until(lambda: srv.running.inflight.active == 0, what="the stream to end")
        assert stub.Embed(pb.EmbedRequest(texts=["still serving"]), timeout=10).count == 1
    loud = [
        f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING
    ]
    assert not loud, loud


def test_an_answer_ready_after_the_deadline_is_deadline_exceeded_not_ok(bundle: Bundle) -> None:
    """Issue 14, defect 7: about 1 call in 15-30k with 1 ms deadlines was answered OK after its deadline
    (gRPC had not cancelled it yet). Deterministic here: the servicer's clock (its seam) jumps past the
    deadline while the call's batch is held in the worker, and gRPC's own clock never gets there."""
    with fault_server(bundle, workers=1) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.EmbedderStub(ch)
        shift = [0.0]
        srv.running.service.clock = lambda: time.monotonic() + shift[0]
        srv.faults.open.clear()
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(stub.Embed, pb.EmbedRequest(texts=["ready too late"]), timeout=30)
            assert srv.faults.waiting.acquire(timeout=10)  # its batch is running, held at the gate
            shift[0] = 60.0  # past the 30 s deadline, on the servicer's clock only
            srv.faults.open.set()
            with pytest.raises(grpc.RpcError) as info:
                call.result(timeout=30)
        assert sample(srv.metrics_url, REQUESTS, method="Embed", code="OK") == 0
        assert sample(srv.metrics_url, REQUESTS, method="Embed", code="DEADLINE_EXCEEDED") == 1
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert "deadline passed before the answer was ready" in info.value.details()  # type: ignore[attr-defined]
