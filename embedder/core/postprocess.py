"""Embedding post-processing: Matryoshka truncation first, then L2 normalisation (a truncated prefix of
a unit vector is not a unit vector). Packing for a wire format is the front end's job."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


def postprocess(embeddings: FloatArray, dimensions: int, normalize: bool) -> FloatArray:
    """Keep the first `dimensions` values (0 = all), then L2-normalise rows if asked."""
    out = embeddings[:, :dimensions] if 0 < dimensions < embeddings.shape[1] else embeddings
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, np.float32(1e-12))
    return np.ascontiguousarray(out, dtype=np.float32)
