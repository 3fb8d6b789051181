"""EmbedderClient / AsyncEmbedderClient against real servers: chunking, retries, round-robin."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from embedder.client import AsyncEmbedderClient, ClientOptions, EmbedderClient
from embedder.core.engine import EmbeddingEngine
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import ServerThread, embed_reference, sample_texts


def dead_address() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def requests_made(srv: ServerThread, code: str) -> float:
    return srv.running.metrics.request_counts().get(("Embed", code), 0)


def test_splits_into_server_sized_requests(
    start_server: Callable[..., ServerThread], reference: EmbeddingEngine
) -> None:
    srv = start_server(max_texts_per_request=16, max_queued_items=64)
    texts = sample_texts(100, seed=11)
    with EmbedderClient(srv.address) as client:
        got = client.embed(texts)
        assert client.embed([]).shape == (0, reference.manifest.dim)
    np.testing.assert_allclose(got, embed_reference(reference, texts), atol=1e-5)
    assert requests_made(srv, "OK") == 7  # ceil(100 / 16): the limit came from GetModelInfo


def test_retries_unavailable_on_the_next_address(server: ServerThread, reference: EmbeddingEngine) -> None:
    options = ClientOptions(backoff_initial_s=0.01, timeout_s=20)
    with EmbedderClient([dead_address(), server.address], options) as client:
        for _ in range(4):  # every other attempt hits the dead address first
            got = client.embed(["round robin"])
    np.testing.assert_allclose(got, embed_reference(reference, ["round robin"]), atol=1e-5)


class CancellingServicer(pb_grpc.EmbedderServicer):
    """A replica whose gRPC stop cut the call off: every call ends CANCELLED."""

    def __init__(self) -> None:
        self.calls = 0

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:  # noqa: N802
        self.calls += 1
        context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        raise AssertionError("unreachable")

    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext) -> pb.ModelInfo:  # noqa: N802
        self.calls += 1
        context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        raise AssertionError("unreachable")


def test_retries_a_cancelled_it_did_not_ask_for(server: ServerThread, reference: EmbeddingEngine) -> None:
    """Issue 14, rolling restart: a stopping replica's gRPC can end a just-arrived call CANCELLED, which
    the client used to raise. Embed is idempotent: it tries the next address."""
    stopping = grpc.server(ThreadPoolExecutor(2))
    servicer = CancellingServicer()
    pb_grpc.add_EmbedderServicer_to_server(servicer, stopping)  # type: ignore[no-untyped-call]
    port = stopping.add_insecure_port("127.0.0.1:0")
    stopping.start()
    try:
        options = ClientOptions(backoff_initial_s=0.01, timeout_s=20, max_texts_per_request=8)
        with EmbedderClient([f"127.0.0.1:{port}", server.address], options) as client:
            got = client.embed(["cut off once"])
    finally:
        stopping.stop(0)
    assert servicer.calls >= 1  # it was tried, and its CANCELLED retried elsewhere
    np.testing.assert_allclose(got, embed_reference(reference, ["cut off once"]), atol=1e-5)


def test_gives_up_after_max_attempts() -> None:
    options = ClientOptions(max_attempts=3, backoff_initial_s=0.01, max_texts_per_request=8, timeout_s=20)
    t0 = time.monotonic()
    with EmbedderClient(dead_address(), options) as client, pytest.raises(grpc.RpcError) as info:
        client.embed(["nobody home"])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - t0 < 10


def test_does_not_retry_invalid_argument(server: ServerThread) -> None:
    with (
        EmbedderClient(server.address, ClientOptions(dimensions=7)) as client,
        pytest.raises(grpc.RpcError) as info,
    ):
        client.embed(["x"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_async_client_retries_resource_exhausted(
    start_server: Callable[..., ServerThread], reference: EmbeddingEngine
) -> None:
    # One worker, 1-text batches and a 32-text queue: 24 concurrent 32-text requests overflow the queue.
    srv = start_server(workers=1, max_batch_items=1, max_queued_items=32, max_texts_per_request=32)
    texts = sample_texts(32 * 24, seed=12)
    options = ClientOptions(
        backoff_initial_s=0.005, backoff_max_s=0.05, max_attempts=500, max_concurrent_requests=24
    )

    async def run() -> np.ndarray:
        async with AsyncEmbedderClient(srv.address, options) as client:
            return await client.embed(texts)

    got = asyncio.run(run())
    np.testing.assert_allclose(got, embed_reference(reference, texts), atol=1e-5)
    assert requests_made(srv, "RESOURCE_EXHAUSTED") > 0  # the retry path really ran
    assert requests_made(srv, "OK") == 24


def test_options_reach_the_server(server: ServerThread, reference: EmbeddingEngine) -> None:
    options = ClientOptions(dimensions=64, normalize=False, encoding=pb.ENCODING_FLOAT16)
    with EmbedderClient(server.address, options) as client:
        got = client.embed(["options"])
    assert got.dtype == np.float32 and got.shape == (1, 64)
    want = embed_reference(reference, ["options"], dimensions=64, normalize=False)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def test_several_connections_per_address_interleave_the_addresses() -> None:
    from embedder.client import _connections

    got = _connections(["a:1", "b:2"], 2, [("grpc.primary_user_agent", "x")])
    assert [a for a, _ in got] == ["a:1", "b:2", "a:1", "b:2"]  # a retry takes the next: another address
    own = ("grpc.use_local_subchannel_pool", 1)  # each a connection of its own, not gRPC's shared one
    assert all(options == [("grpc.primary_user_agent", "x"), own] for _, options in got)
    assert _connections("a:1", 1, []) == [("a:1", [])]
    with pytest.raises(ValueError, match="connections_per_address"):
        _connections("a:1", 0, [])
