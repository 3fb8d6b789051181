"""The wire codec: embeddings packed as little-endian float32 / float16 / int8 (one scale per row),
shared by the server (pack) and the client (unpack), and the per-call `Timing` message both Embed and
Explain answer with. Post-processing (truncation, normalisation) comes before, in the core.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from embedder.v1 import embedder_pb2 as pb

FloatArray = npt.NDArray[np.float32]

ENCODINGS: tuple[pb.Encoding, ...] = (pb.ENCODING_FLOAT32, pb.ENCODING_FLOAT16, pb.ENCODING_INT8)
_DTYPES: dict[int, np.dtype[Any]] = {
    pb.ENCODING_FLOAT32: np.dtype("<f4"),
    pb.ENCODING_FLOAT16: np.dtype("<f2"),
    pb.ENCODING_INT8: np.dtype("i1"),
}


@dataclass(frozen=True)
class Packed:
    data: bytes
    scales: list[float]


def pack(embeddings: FloatArray, encoding: int) -> Packed:
    """Pack rows as `encoding` says; int8 uses a symmetric per-row scale (value = int8 * scale)."""
    if encoding == pb.ENCODING_INT8:
        scales = (
            np.abs(embeddings).max(axis=1) / np.float32(127.0) if embeddings.size else np.zeros(0, np.float32)
        )
        safe = np.where(scales > 0, scales, np.float32(1.0))[:, None]
        q = np.clip(np.rint(embeddings / safe), -127, 127).astype(np.int8)
        return Packed(q.tobytes(), scales.astype(np.float32).tolist())
    return Packed(embeddings.astype(_DTYPES[encoding], copy=False).tobytes(), [])


def unpack(data: bytes, encoding: int, count: int, dim: int, scales: list[float] | None = None) -> FloatArray:
    """Inverse of `pack`: a float32 [count, dim] array."""
    dtype = _DTYPES.get(encoding)
    if dtype is None:
        raise ValueError(f"unknown encoding {encoding}")
    values = np.frombuffer(data, dtype=dtype)
    if values.size != count * dim:
        raise ValueError(f"payload holds {values.size} values, expected {count} x {dim}")
    rows = values.reshape(count, dim).astype(np.float32)
    if encoding == pb.ENCODING_INT8:
        if scales is None or len(scales) != count:
            raise ValueError(f"int8 payload needs {count} scales")
        rows *= np.asarray(scales, dtype=np.float32)[:, None]
    return rows


def timing(tokenize_s: float, queue_s: float, inference_s: float, started: float) -> pb.Timing:
    """Stage times in microseconds; `total_us` runs from `started` (on `time.monotonic`) to now."""
    return pb.Timing(
        tokenize_us=_us(tokenize_s),
        queue_us=_us(queue_s),
        inference_us=_us(inference_s),
        total_us=_us(time.monotonic() - started),
    )


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1e6))
