"""Fuzzing: hypothesis-generated requests against a live server. Whatever the fields hold (any Unicode
text, any lengths and counts, any option values, raw bytes that may not even parse), every call is
answered within its deadline with OK or a precise refusal: never INTERNAL or UNKNOWN, never a hang, and
the server keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedder.client import decode
from embedder.core.bundle import Bundle
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.conftest import TEST_MATRYOSHKA_DIMS
from tests.hardening import health_status
from tests.support import ServerThread, make_config

LIMITS = {"max_texts_per_request": 16, "max_text_chars": 2000, "max_receive_message_bytes": 64 * 1024}
CALL_TIMEOUT_S = 15.0  # a call not answered by then counts as a hang
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
UINT32 = 2**32 - 1
INT32 = 2**31 - 1

# Any code point except lone surrogates (protobuf strings must be valid UTF-8); bias towards the odd.
odd_chars = st.characters(blacklist_categories=("Cs",))
texts = st.lists(
    st.one_of(
        st.text(odd_chars, max_size=60),
        st.text(st.sampled_from("a \x00\u202e\u0301\U0001f600\ufeff\n"), max_size=300),
        st.builds(lambda n, c: c * n, st.integers(1990, 2010), st.sampled_from(["x", "é", "😀", " "])),
    ),
    max_size=20,
)
requests = st.builds(
    lambda t, norm, dims, trunc, enc, rid: pb.EmbedRequest(
        texts=t, normalize=norm, dimensions=dims, truncate=trunc, encoding=enc, request_id=rid
    ),
    texts,
    st.none() | st.booleans(),
    st.sampled_from([0, *TEST_MATRYOSHKA_DIMS, 1, 100]) | st.integers(0, UINT32),
    st.none() | st.booleans(),
    st.sampled_from([0, 1, 2]) | st.integers(-INT32 - 1, INT32),
    st.text(odd_chars, max_size=140),
)


@pytest.fixture(scope="module")
def fuzz_server(bundle: Bundle) -> Iterator[ServerThread]:
    srv = ServerThread(bundle, make_config(**LIMITS))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.address) as ch:
        yield ch
        assert pb_grpc.EmbedderStub(ch).Embed(pb.EmbedRequest(texts=["still serving"]), timeout=10).count == 1
        assert health_status(ch) == "SERVING"


def check_answer(request: pb.EmbedRequest, response: pb.EmbedResponse) -> None:
    """An OK answer is complete and finite; a request that breaks a documented rule is never OK."""
    assert 1 <= len(request.texts) <= LIMITS["max_texts_per_request"]
    assert all(1 <= len(t) <= LIMITS["max_text_chars"] for t in request.texts)
    assert response.count == len(request.texts) and len(response.token_counts) == response.count
    vectors = decode(response)
    assert vectors.shape[0] == len(request.texts) and np.isfinite(vectors).all()
    if request.dimensions:
        assert response.dim == request.dimensions


@given(request=requests)
@settings(FUZZ, max_examples=400)
def test_embed_answers_ok_or_a_precise_refusal(channel: grpc.Channel, request: pb.EmbedRequest) -> None:
    try:
        response = pb_grpc.EmbedderStub(channel).Embed(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as err:
        assert err.code() in REFUSALS, (err.code(), err.details())  # type: ignore[attr-defined]
        assert err.details()  # type: ignore[attr-defined]
        return
    check_answer(request, response)


@given(payload=st.binary(max_size=300) | requests.map(lambda r: r.SerializeToString()[:-1] + b"\xff"))
@settings(FUZZ, max_examples=200)
def test_raw_bytes_never_break_the_server(channel: grpc.Channel, payload: bytes) -> None:
    call = channel.unary_unary("/streamrec.embedder.v1.Embedder/Embed")
    try:
        call(payload, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as err:
        assert err.code() in REFUSALS, (err.code(), err.details())  # type: ignore[attr-defined]


@given(batch=st.lists(requests, min_size=1, max_size=6))
@settings(FUZZ, max_examples=60)
def test_stream_answers_every_message(channel: grpc.Channel, batch: list[pb.EmbedRequest]) -> None:
    try:
        responses = list(pb_grpc.EmbedderStub(channel).EmbedStream(iter(batch), timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as err:  # only a message over the receive limit may end the whole stream
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()  # type: ignore[attr-defined]
        return
    assert len(responses) == len(batch)
    for request, response in zip(batch, responses, strict=True):
        if response.HasField("error"):
            assert response.error.code in {c.value[0] for c in REFUSALS}, response.error
        else:
            check_answer(request, response)
