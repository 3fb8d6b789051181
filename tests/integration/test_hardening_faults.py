"""Faults in inference, injected through the server's session seam (tests/hardening.py `Faults`).

An inference error fails only the request that caused it, with INTERNAL and its request id and nothing
of the model's own message; a stuck worker is bounded by `inference_timeout_s` and replaced; a worker
thread hit by SystemExit keeps serving. The server stays SERVING throughout, until workers keep getting
stuck, when it says NOT_SERVING (restart me) and still answers every call.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from embedder.client import decode
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.hardening import SECRET, fault_server, health_status, sample, token_of, wait_until
from tests.support import embed_reference, sample_texts

QUEUED = "streamrec_embedder_queue_items"
FAILED = "streamrec_embedder_failed_batches_total"


def internal(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    err: grpc.RpcError = info.value  # type: ignore[assignment]
    assert err.code() == grpc.StatusCode.INTERNAL, err.details()
    assert SECRET not in err.details() and "Traceback" not in err.details()
    return err


def test_inference_error_fails_only_the_poisoned_call(
    bundle: Bundle, reference: EmbeddingEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # min_padding_efficiency=0: the four requests' texts of mixed lengths must share one batch.
    with (
        fault_server(bundle, workers=1, min_padding_efficiency=0.0) as srv,
        grpc.insecure_channel(srv.address) as ch,
    ):
        faults = srv.faults
        faults.fail_token = token_of(srv, "volcano")
        stub = pb_grpc.EmbedderStub(ch)
        faults.open.clear()
        with ThreadPoolExecutor(8) as pool:
            blocker = pool.submit(stub.Embed, pb.EmbedRequest(texts=["hold the worker"]), timeout=30)
            assert faults.waiting.acquire(timeout=10)
            good_texts = [sample_texts(3, seed=i) for i in range(3)]
            good = [pool.submit(stub.Embed, pb.EmbedRequest(texts=t), timeout=30) for t in good_texts]
            poisoned = pb.EmbedRequest(texts=["fine", "volcano ash"], request_id="poison-1")
            bad = pool.submit(stub.Embed, poisoned, timeout=30)
            # All four wait in the queue, so they share one batch when the worker frees up.
            wait_until(lambda: sample(srv.metrics_url, QUEUED) == 11, what="11 queued texts")
            faults.open.set()
            assert blocker.result(timeout=30).count == 1
            for texts, future in zip(good_texts, good, strict=True):
                got = decode(future.result(timeout=30))
                np.testing.assert_allclose(got, embed_reference(reference, texts), atol=1e-5)
            err = internal(lambda: bad.result(timeout=30))
        assert err.details() == "internal error (request id poison-1)"
        # The merged batch failed, then the poisoned request alone; the good ones were re-run and served.
        assert sample(srv.metrics_url, FAILED, reason="error") == 2
        assert health_status(ch) == "SERVING"
        assert stub.Embed(pb.EmbedRequest(texts=["after the fault"]), timeout=10).count == 1
    assert SECRET in caplog.text  # the model's message goes to the log, not to the caller
    assert "poison-1" in caplog.text  # under the id the caller was given


# 0: every batch on a worker thread; 128 (the default): a lone one-text batch runs on the event loop.
INLINE = pytest.mark.parametrize("inline_tokens", [0, 128], ids=["worker", "inline"])


@INLINE
def test_inference_error_in_a_stream_fails_only_that_message(bundle: Bundle, inline_tokens: int) -> None:
    with (
        fault_server(bundle, workers=1, inline_infer_max_tokens=inline_tokens) as srv,
        grpc.insecure_channel(srv.address) as ch,
    ):
        srv.faults.fail_token = token_of(srv, "volcano")
        messages = [
            pb.EmbedRequest(texts=["first"], request_id="m1"),
            pb.EmbedRequest(texts=["volcano"], request_id="m2"),
            pb.EmbedRequest(texts=["third"], request_id="m3"),
        ]
        responses = list(pb_grpc.EmbedderStub(ch).EmbedStream(iter(messages), timeout=30))
        assert [r.request_id for r in responses] == ["m1", "m2", "m3"]
        assert [r.count for r in responses] == [1, 0, 1]
        assert responses[1].error.code == grpc.StatusCode.INTERNAL.value[0]
        assert responses[1].error.message == "internal error (request id m2)"
        assert health_status(ch) == "SERVING"
        assert (srv.running.engine.sessions.inline_batches > 0) is (inline_tokens > 0)


def test_stuck_worker_is_bounded_by_the_timeout_and_replaced(bundle: Bundle) -> None:
    timeout_s = 1.0
    with (
        fault_server(bundle, workers=1, inference_timeout_s=timeout_s) as srv,
        grpc.insecure_channel(srv.address) as ch,
    ):
        srv.faults.hang_token = token_of(srv, "glacier")
        stub = pb_grpc.EmbedderStub(ch)

        def stuck_call(rid: str) -> float:
            started = time.monotonic()
            err = internal(lambda: stub.Embed(pb.EmbedRequest(texts=["glacier"], request_id=rid), timeout=30))
            assert rid in err.details()
            return time.monotonic() - started

        waited = stuck_call("stuck-1")
        assert timeout_s <= waited < timeout_s + 5, waited
        assert sample(srv.metrics_url, FAILED, reason="timeout") == 1
        # The stuck session was replaced: the single worker slot serves again, and health says so.
        assert stub.Embed(pb.EmbedRequest(texts=["served by the replacement"]), timeout=10).count == 1
        assert health_status(ch) == "SERVING"
        # Stuck again: no replacements left (one per worker). Health asks for a restart ...
        stuck_call("stuck-2")
        wait_until(lambda: health_status(ch) == "NOT_SERVING", what="NOT_SERVING")
        # ... and a caller with no session left to run on is still answered, within the timeout.
        waited = stuck_call("no-session-left")
        assert waited < timeout_s + 5, waited


@INLINE
def test_system_exit_in_inference_keeps_serving(bundle: Bundle, inline_tokens: int) -> None:
    with (
        fault_server(bundle, workers=1, inline_infer_max_tokens=inline_tokens) as srv,
        grpc.insecure_channel(srv.address) as ch,
    ):
        srv.faults.exit_token = token_of(srv, "meteor")
        stub = pb_grpc.EmbedderStub(ch)
        err = internal(lambda: stub.Embed(pb.EmbedRequest(texts=["meteor"], request_id="exit-1"), timeout=30))
        assert err.details() == "internal error (request id exit-1)"
        assert srv.loop.is_running()  # SystemExit did not reach the event loop
        for i in range(3):  # the one worker slot still serves
            assert stub.Embed(pb.EmbedRequest(texts=[f"still here {i}"]), timeout=10).count == 1
        threads = srv.running.engine.sessions._executor._threads
        assert len(threads) == 2 and all(t.is_alive() for t in threads)  # 1 worker + 1 spare, none died
        assert health_status(ch) == "SERVING"
        assert (srv.running.engine.sessions.inline_batches > 0) is (inline_tokens > 0)
