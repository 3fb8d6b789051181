"""Post-processing order and wire packing round trips."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.core.postprocess import postprocess
from embedder.grpc.encoding import pack, unpack
from embedder.v1 import embedder_pb2 as pb


@pytest.fixture
def rows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32) * 3


def test_truncate_then_normalize(rows: np.ndarray) -> None:
    out = postprocess(rows, dimensions=4, normalize=True)
    assert out.shape == (5, 4)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        out, rows[:, :4] / np.linalg.norm(rows[:, :4], axis=1, keepdims=True), rtol=1e-6
    )


def test_no_normalize_keeps_raw_values(rows: np.ndarray) -> None:
    np.testing.assert_array_equal(postprocess(rows, dimensions=0, normalize=False), rows)


def test_zero_row_normalizes_to_zero_not_nan() -> None:
    out = postprocess(np.zeros((1, 4), np.float32), 0, True)
    assert np.all(out == 0)


def test_float32_round_trip_is_exact(rows: np.ndarray) -> None:
    packed = pack(rows, pb.ENCODING_FLOAT32)
    assert len(packed.data) == rows.size * 4
    np.testing.assert_array_equal(unpack(packed.data, pb.ENCODING_FLOAT32, 5, 16), rows)


def test_float16_round_trip_is_close(rows: np.ndarray) -> None:
    packed = pack(rows, pb.ENCODING_FLOAT16)
    assert len(packed.data) == rows.size * 2
    np.testing.assert_allclose(unpack(packed.data, pb.ENCODING_FLOAT16, 5, 16), rows, rtol=1e-3, atol=1e-3)


def test_int8_round_trip_within_half_a_step(rows: np.ndarray) -> None:
    packed = pack(rows, pb.ENCODING_INT8)
    assert len(packed.data) == rows.size and len(packed.scales) == 5
    back = unpack(packed.data, pb.ENCODING_INT8, 5, 16, packed.scales)
    step = np.asarray(packed.scales)[:, None]
    assert np.all(np.abs(back - rows) <= step / 2 + 1e-6)
    assert np.abs(np.frombuffer(packed.data, np.int8)).max() == 127


def test_unpack_refuses_a_wrong_size() -> None:
    with pytest.raises(ValueError, match="expected 2 x 4"):
        unpack(b"\x00" * 12, pb.ENCODING_FLOAT32, 2, 4)
