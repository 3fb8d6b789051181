"""protobuf -> core options (embedder/grpc/translate.py): what an unset field means, and the cache bypass.

proto3 `optional` fields have presence: unset is not the same as false, and unset means the default
(normalize, truncate and cache all true), so a caller that has never heard of a field keeps today's
behaviour.
"""

from __future__ import annotations

import pytest

from embedder.core.engine import EmbedOptions
from embedder.errors import InvalidInputError
from embedder.grpc.translate import embed_request
from embedder.v1 import embedder_pb2 as pb


def test_unset_fields_mean_the_defaults() -> None:
    options, encoding = embed_request(pb.EmbedRequest(texts=["a"]))
    assert options == EmbedOptions(normalize=True, dimensions=0, truncate=True, cache=True)
    assert encoding == pb.ENCODING_FLOAT32


@pytest.mark.parametrize("cache", [False, True])
def test_the_cache_field_reaches_the_core(cache: bool) -> None:
    options, _ = embed_request(pb.EmbedRequest(texts=["a"], cache=cache))
    assert options.cache is cache
    # Only the cache changes: the other options keep their defaults.
    assert options == EmbedOptions(cache=cache)


def test_every_field_together() -> None:
    request = pb.EmbedRequest(
        texts=["a"], normalize=False, dimensions=64, truncate=False, cache=False, encoding=pb.ENCODING_INT8
    )
    options, encoding = embed_request(request)
    assert options == EmbedOptions(normalize=False, dimensions=64, truncate=False, cache=False)
    assert encoding == pb.ENCODING_INT8


def test_a_request_from_the_wire_without_the_field_uses_the_cache() -> None:
    """Bytes of a request built before the field existed (fields 1-7 only) decode to cache=True."""
    old = pb.EmbedRequest(texts=["a"], normalize=True, request_id="r1", model="m").SerializeToString()
    decoded = pb.EmbedRequest.FromString(old)
    assert not decoded.HasField("cache")
    assert embed_request(decoded)[0].cache is True


def test_undecodable_requests_and_bad_encodings_are_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="not a valid EmbedRequest"):
        embed_request(None)
    with pytest.raises(InvalidInputError, match="encoding: unknown value 9"):
        embed_request(pb.EmbedRequest(texts=["a"], encoding=9))  # type: ignore[arg-type]
