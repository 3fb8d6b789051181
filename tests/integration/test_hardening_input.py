"""Input policy (docs/operations.md, "Input policy"): one test per row, against a real server.

Every refusal names the field and the limit, and after every test the server still answers a good call
and reports SERVING (the autouse fixture checks it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tokenizers import Tokenizer

from embedder.client import decode
from embedder.core.engine import EmbeddingEngine
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.hardening import wait_until
from tests.support import ServerThread, embed_reference

EMBED = "/streamrec.embedder.v1.Embedder/Embed"
STREAM = "/streamrec.embedder.v1.Embedder/EmbedStream"
LIMITS = {"max_texts_per_request": 16, "max_text_chars": 20000, "max_receive_message_bytes": 256 * 1024}


@pytest.fixture(scope="module")
def policy_server(bundle) -> Iterator[ServerThread]:  # type: ignore[no-untyped-def]
    from tests.support import make_config

    srv = ServerThread(bundle, make_config(**LIMITS))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(policy_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(policy_server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> Iterator[pb_grpc.EmbedderStub]:
    yield pb_grpc.EmbedderStub(channel)
    # The server keeps serving after every row.
    assert pb_grpc.EmbedderStub(channel).Embed(pb.EmbedRequest(texts=["still fine"]), timeout=10).count == 1
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value  # type: ignore[return-value]


def expect_invalid(stub: pb_grpc.EmbedderStub, pattern: str, **request: object) -> None:
    err = refused(lambda: stub.Embed(pb.EmbedRequest(**request), timeout=10))  # type: ignore[arg-type]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert re.search(pattern, err.details()), err.details()


def test_no_texts(stub: pb_grpc.EmbedderStub) -> None:
    expect_invalid(stub, r"^texts: empty; send 1\.\.16 texts", texts=[])


def test_empty_text(stub: pb_grpc.EmbedderStub) -> None:
    expect_invalid(stub, r"^texts\[1\]: empty; each text needs 1\.\.20000 characters", texts=["ok", ""])


def test_too_many_texts(stub: pb_grpc.EmbedderStub) -> None:
    expect_invalid(stub, r"^texts: 17 texts exceed max_texts_per_request=16", texts=["x"] * 17)


def test_text_over_max_text_chars_is_refused_before_tokenizing(
    start_server: Callable[..., ServerThread], reference: EmbeddingEngine
) -> None:
    # The character count is checked first, so refusing a 1.2 M-character text (sent in full) takes far
    # less time than tokenizing it whole would (the server's tokenizer would only read a prefix of it
    # now, so the comparison is with the `tokenizers` library itself).
    srv = start_server(max_text_chars=20000)
    huge = "music " * 200_000  # 1.2 M characters
    whole = Tokenizer.from_file(str(reference.bundle.tokenizer_path))
    started = time.perf_counter()
    whole.encode(huge)
    tokenize_s = time.perf_counter() - started
    with grpc.insecure_channel(srv.address) as ch:
        stub = pb_grpc.EmbedderStub(ch)
        started = time.perf_counter()
        err = refused(lambda: stub.Embed(pb.EmbedRequest(texts=["ok", huge]), timeout=10))
        refuse_s = time.perf_counter() - started
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.match(r"texts\[1\]: 1200000 characters exceed max_text_chars=20000", err.details())
    assert refuse_s < tokenize_s / 2, (refuse_s, tokenize_s)


def test_over_max_tokens_with_truncate_false(stub: pb_grpc.EmbedderStub, reference: EmbeddingEngine) -> None:
    long_text = " ".join(["music"] * 500)
    limit = reference.manifest.max_tokens
    pattern = rf"^texts\[1\]: longer than max_tokens={limit} and truncate=false"
    expect_invalid(stub, pattern, texts=["ok", long_text], truncate=False)


def test_exactly_at_the_limits_is_accepted(stub: pb_grpc.EmbedderStub) -> None:
    texts = ["y" * (LIMITS["max_text_chars"] // 2)] * 2 + ["z"] * (LIMITS["max_texts_per_request"] - 2)
    assert stub.Embed(pb.EmbedRequest(texts=texts), timeout=10).count == LIMITS["max_texts_per_request"]
    one = stub.Embed(pb.EmbedRequest(texts=["w" * LIMITS["max_text_chars"]]), timeout=10)
    assert one.count == 1


def test_over_max_tokens_is_truncated_by_default(
    stub: pb_grpc.EmbedderStub, reference: EmbeddingEngine
) -> None:
    long_text = " ".join(["music"] * 500)
    limit = reference.manifest.max_tokens
    for truncate in (None, True):
        resp = stub.Embed(pb.EmbedRequest(texts=[long_text, "short"], truncate=truncate), timeout=10)
        assert list(resp.token_counts) == [limit, 3]


@pytest.mark.parametrize("dimensions", [100, 1, 2**32 - 1])
def test_dimensions_not_offered(
    stub: pb_grpc.EmbedderStub, reference: EmbeddingEngine, dimensions: int
) -> None:
    offered = reference.manifest.allowed_dimensions()
    expect_invalid(
        stub,
        rf"^dimensions: {dimensions} not supported; use 0 \(full\) or one of {re.escape(str(offered))}",
        texts=["x"],
        dimensions=dimensions,
    )


@pytest.mark.parametrize("value", [9, -1, 2**31 - 1])
def test_unknown_encoding(stub: pb_grpc.EmbedderStub, value: int) -> None:
    expect_invalid(
        stub, rf"^encoding: unknown value {value}; use one of \[0, 1, 2\]", texts=["x"], encoding=value
    )


def test_message_over_receive_limit_is_resource_exhausted(
    stub: pb_grpc.EmbedderStub, policy_server: ServerThread
) -> None:
    unreceived = policy_server.running.metrics.unreceived_requests.labels(method="Embed")
    before = unreceived._value.get()
    err = refused(lambda: stub.Embed(pb.EmbedRequest(texts=["y" * 19000] * 15), timeout=10))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.search(r"larger than max \(\d+ vs\. 262144\)", err.details()), err.details()
    # gRPC refuses it before any handler runs; it is still counted (issue 14, defect 6: it was not).
    wait_until(lambda: unreceived._value.get() == before + 1, what="the refusal counted")


def _texts_field(payload: bytes) -> bytes:
    """EmbedRequest wire bytes with one `texts` entry (field 1, length-delimited) holding `payload`."""
    assert len(payload) < 128
    return b"\x0a" + bytes([len(payload)]) + payload


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"ok \xc3(", b"\xed\xa0\x80 lone surrogate"])
def test_invalid_utf8_on_the_wire(channel: grpc.Channel, stub: pb_grpc.EmbedderStub, payload: bytes) -> None:
    raw = channel.unary_unary(EMBED, request_serializer=None, response_deserializer=None)
    err = refused(lambda: raw(_texts_field(payload), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("request: not a valid EmbedRequest"), err.details()
    assert "UTF-8" in err.details()


def test_invalid_utf8_in_a_stream_fails_only_that_message(channel: grpc.Channel) -> None:
    good = pb.EmbedRequest(texts=["fine"], request_id="a").SerializeToString()
    raw = channel.stream_stream(
        STREAM, request_serializer=None, response_deserializer=pb.EmbedResponse.FromString
    )
    responses = list(raw(iter([good, _texts_field(b"\xff"), good]), timeout=10))
    assert [r.HasField("error") for r in responses] == [False, True, False]
    assert responses[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "UTF-8" in responses[1].error.message


@pytest.mark.parametrize("request_id", ["r" * 129, "line\nbreak", "tab\there"])
def test_bad_request_id(stub: pb_grpc.EmbedderStub, request_id: str) -> None:
    expect_invalid(
        stub, r"^request_id: must be at most 128 printable characters", texts=["x"], request_id=request_id
    )


ODD_TEXTS = {
    "emoji": "👍🏽 great track 🎸🔥 👨‍👩‍👧‍👦",
    "rtl": "مرحبا بالعالم — שלום עולם",
    "bidi-override": "abc \u202edlrow\u202c xyz",
    "nul-and-controls": "a\x00b\x01c\x7f d\u200be\ufeff",
    "only-controls": "\x00\x01\x02",
    "whitespace-only": " \t\n ",
    "combining-marks": "e\u0301\u0301\u0301 Z\u0334\u0321\u0322a\u0335l\u0336g\u0337o",
    "10000-char-word": "a" * 10_000,
    "noncharacters": "\ufffe\uffff\U0010ffff",
}


@pytest.mark.parametrize("name", list(ODD_TEXTS))
def test_odd_unicode_is_accepted_and_embedded(
    stub: pb_grpc.EmbedderStub, reference: EmbeddingEngine, name: str
) -> None:
    texts = [ODD_TEXTS[name], "plain text"]
    resp = stub.Embed(pb.EmbedRequest(texts=texts), timeout=10)
    got = decode(resp)
    assert got.shape == (2, reference.manifest.dim)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, embed_reference(reference, texts), atol=1e-5)
    assert 2 <= resp.token_counts[0] <= reference.manifest.max_tokens
