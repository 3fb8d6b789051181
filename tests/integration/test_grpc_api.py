"""The gRPC API against a real server (port 0) and the real exported ONNX model.

Every embedding that comes back over gRPC is compared with the same text embedded alone in-process,
so batching, padding, grouping and ordering on the server cannot change a result unnoticed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedder.client import EmbedderClient, decode
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine
from embedder.grpc.server import SERVICE_NAME
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import ServerThread, embed_reference, sample_texts

ATOL = 1e-5


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(server.address)
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.EmbedderStub:
    return pb_grpc.EmbedderStub(channel)


def test_embed_equals_in_process(stub: pb_grpc.EmbedderStub, reference: EmbeddingEngine) -> None:
    texts = sample_texts(40, seed=1)
    resp = stub.Embed(pb.EmbedRequest(texts=texts, request_id="req-1"), timeout=30)
    assert resp.request_id == "req-1"
    assert (resp.count, resp.dim) == (40, reference.manifest.dim)
    assert resp.encoding == pb.ENCODING_FLOAT32
    got = np.frombuffer(resp.embeddings, dtype="<f4").reshape(resp.count, resp.dim)
    np.testing.assert_allclose(got, embed_reference(reference, texts), atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert list(resp.token_counts) == reference.tokenizer.encode(texts).token_counts
    assert resp.total_tokens == sum(resp.token_counts)
    assert resp.timing.total_us >= resp.timing.inference_us > 0
    assert resp.model == reference.manifest.name


def test_request_id_is_generated_when_missing(stub: pb_grpc.EmbedderStub) -> None:
    resp = stub.Embed(pb.EmbedRequest(texts=["x"]), timeout=30)
    assert len(resp.request_id) == 16


def test_options_normalize_dimensions_truncate(
    stub: pb_grpc.EmbedderStub, reference: EmbeddingEngine
) -> None:
    texts = sample_texts(6, seed=2)
    raw = decode(stub.Embed(pb.EmbedRequest(texts=texts, normalize=False), timeout=30))
    np.testing.assert_allclose(raw, embed_reference(reference, texts, normalize=False), atol=ATOL)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)

    short = decode(stub.Embed(pb.EmbedRequest(texts=texts, dimensions=64), timeout=30))
    assert short.shape == (6, 64)
    np.testing.assert_allclose(short, embed_reference(reference, texts, dimensions=64), atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, rtol=1e-5)

    long_text = " ".join(["music"] * 500)
    resp = stub.Embed(pb.EmbedRequest(texts=[long_text]), timeout=30)
    assert list(resp.token_counts) == [reference.manifest.max_tokens]


@pytest.mark.parametrize(
    ("encoding", "atol", "bytes_per_value"),
    [(pb.ENCODING_FLOAT32, ATOL, 4), (pb.ENCODING_FLOAT16, 2e-3, 2), (pb.ENCODING_INT8, 1e-2, 1)],
)
def test_encodings(
    stub: pb_grpc.EmbedderStub, reference: EmbeddingEngine, encoding: int, atol: float, bytes_per_value: int
) -> None:
    texts = sample_texts(5, seed=3)
    resp = stub.Embed(pb.EmbedRequest(texts=texts, encoding=encoding), timeout=30)  # type: ignore[arg-type]
    assert resp.encoding == encoding
    assert len(resp.embeddings) == resp.count * resp.dim * bytes_per_value
    assert len(resp.scales) == (resp.count if encoding == pb.ENCODING_INT8 else 0)
    np.testing.assert_allclose(decode(resp), embed_reference(reference, texts), atol=atol)


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"texts": []}, "texts"),
        ({"texts": ["x"] * 513}, "max_texts_per_request=512"),
        ({"texts": ["ok", "y" * 20001]}, r"texts\[1\].*max_text_chars=20000"),
        ({"texts": ["x"], "dimensions": 100}, "dimensions"),
        ({"texts": ["x"], "encoding": 9}, "encoding"),
        ({"texts": ["ok", " ".join(["music"] * 500)], "truncate": False}, r"texts\[1\].*max_tokens"),
    ],
)
def test_bad_input_is_invalid_argument(stub: pb_grpc.EmbedderStub, request_kwargs: dict, field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(pb.EmbedRequest(**request_kwargs), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(field, info.value.details()), info.value.details()


def test_message_too_large_is_resource_exhausted(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(max_receive_message_bytes=1024)
    with grpc.insecure_channel(srv.address) as ch, pytest.raises(grpc.RpcError) as info:
        pb_grpc.EmbedderStub(ch).Embed(pb.EmbedRequest(texts=["x" * 2000]), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_stream_of_1000_messages(stub: pb_grpc.EmbedderStub, reference: EmbeddingEngine) -> None:
    texts = sample_texts(300, seed=4)
    expected = {t: row for t, row in zip(texts, embed_reference(reference, texts), strict=True)}
    requests = [
        pb.EmbedRequest(texts=[texts[i % 300], texts[(i * 7) % 300]], request_id=f"m{i}") for i in range(1000)
    ]
    requests[500] = pb.EmbedRequest(texts=[], request_id="bad")  # fails alone; the stream goes on
    responses = list(stub.EmbedStream(iter(requests), timeout=120))
    assert [r.request_id for r in responses] == [r.request_id for r in requests]
    for req, resp in zip(requests, responses, strict=True):
        if req.request_id == "bad":
            assert resp.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "texts" in resp.error.message
            continue
        assert not resp.HasField("error")
        np.testing.assert_allclose(decode(resp), np.stack([expected[t] for t in req.texts]), atol=ATOL)


def test_64_concurrent_callers(server: ServerThread, reference: EmbeddingEngine) -> None:
    texts = sample_texts(64 * 8, seed=5)
    expected = embed_reference(reference, texts)
    with EmbedderClient(server.address) as client:

        def call(i: int) -> np.ndarray:
            return client.embed(texts[i * 8 : (i + 1) * 8])

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(call, range(64)))
    np.testing.assert_allclose(np.concatenate(results), expected, atol=ATOL)


def test_get_model_info(stub: pb_grpc.EmbedderStub, server: ServerThread, bundle: Bundle) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    m = bundle.manifest
    assert (info.name, info.version, info.dim, info.max_tokens) == (m.name, m.version, m.dim, m.max_tokens)
    assert list(info.matryoshka_dims) == m.matryoshka_dims
    assert info.sha256 == m.sha256
    cfg = server.config
    assert info.limits.max_texts_per_request == cfg.max_texts_per_request
    assert info.limits.max_batch_tokens == cfg.max_batch_tokens
    assert info.limits.workers == cfg.resolved_workers()
    assert set(info.encodings) == {pb.ENCODING_FLOAT32, pb.ENCODING_FLOAT16, pb.ENCODING_INT8}


def test_health_is_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (resp,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in resp.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    assert SERVICE_NAME == "streamrec.embedder.v1.Embedder"
