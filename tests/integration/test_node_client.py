"""The API from another language: clients/node (@grpc/grpc-js + @grpc/proto-loader, the .proto loaded at
run time) calls health, GetModelInfo, Embed in every encoding and EmbedStream on a real server (port 0),
and its vectors equal what Python's client decodes from the same requests (<= 1e-6).

Needs Node.js and `make node-deps` (the `requires_node` marker skips without them; CI installs both).
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from embedder.client import decode
from embedder.core.engine import EmbeddingEngine
from embedder.grpc.server import SERVICE_NAME
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import ServerThread, embed_reference, run_node, sample_texts

pytestmark = pytest.mark.requires_node

SAME = 1e-6  # Node and Python decode the same bytes
ATOL = 1e-5  # against texts embedded alone in-process (other batch shapes), as in test_grpc_api.py
TEXTS = [*sample_texts(12, seed=7), "héllo wörld: naïve café", "数据 embeddings"]
STREAM = [TEXTS[:3], TEXTS[3:4], TEXTS[4:12]]


@pytest.fixture(scope="module")
def node_result(server: ServerThread) -> dict[str, Any]:
    return run_node("interop.mjs", server.address, payload={"texts": TEXTS, "stream": STREAM})


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Any:
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.EmbedderStub(channel)


def test_health_and_model_info(node_result: dict[str, Any], reference: EmbeddingEngine) -> None:
    assert node_result["health"] == {"": "SERVING", SERVICE_NAME: "SERVING"}
    assert node_result["model"]["name"] == reference.manifest.name
    assert node_result["model"]["dim"] == reference.manifest.dim


@pytest.mark.parametrize("encoding", ["ENCODING_FLOAT32", "ENCODING_FLOAT16", "ENCODING_INT8"])
def test_embed_vectors_equal_pythons(
    node_result: dict[str, Any], stub: Any, reference: EmbeddingEngine, encoding: str
) -> None:
    got = node_result["embed"][encoding]
    assert (got["request_id"], got["encoding"]) == (f"node-{encoding}", encoding)
    node = np.array(got["rows"], dtype=np.float32)
    resp = stub.Embed(pb.EmbedRequest(texts=TEXTS, encoding=pb.Encoding.Value(encoding)), timeout=30)
    assert got["token_counts"] == list(resp.token_counts)
    python = decode(resp)
    assert node.shape == python.shape == (len(TEXTS), reference.manifest.dim)
    assert np.abs(node - python).max() <= SAME
    if encoding == "ENCODING_FLOAT32":
        np.testing.assert_allclose(node, embed_reference(reference, TEXTS), atol=ATOL)


def test_embed_stream_answers_each_message_in_order(
    node_result: dict[str, Any], stub: Any, reference: EmbeddingEngine
) -> None:
    stream = node_result["stream"]
    assert [m["request_id"] for m in stream] == [f"node-stream-{i}" for i in range(len(STREAM))]
    for message, texts in zip(stream, STREAM, strict=True):
        assert message["error"] is None
        node = np.array(message["rows"], dtype=np.float32)
        python = decode(stub.Embed(pb.EmbedRequest(texts=texts), timeout=30))
        # Stream messages may share a batch (other padding): compare as the gRPC tests compare batches.
        np.testing.assert_allclose(node, python, atol=ATOL)
        np.testing.assert_allclose(node, embed_reference(reference, texts), atol=ATOL)


def test_errors_reach_node_as_grpc_status(node_result: dict[str, Any]) -> None:
    error = node_result["empty_request"]
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error["details"].startswith("texts:")
