"""Quality of what is served: every embedding here comes back over gRPC from the real server.

- STS-B dev Spearman x 100 (cosine vs gold score), as training/evaluate.py computes it in training;
- teacher agreement on held-out item texts: Spearman of pairwise cosines and 10-NN overlap against the
  teacher (the minilm-fp32 bundle, whose gRPC embeddings of the same texts are the reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embedder.client import ClientOptions, EmbedderClient
from training.evaluate import StsPairs, load_sts, spearman, teacher_agreement

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class QualityInputs:
    sts: StsPairs
    texts: list[str]

    @classmethod
    def load(cls, texts: Sequence[str], sts_pairs: int | None) -> QualityInputs:
        """STS-B dev (the first `sts_pairs` pairs, or all) and the agreement texts."""
        sts = load_sts("dev")
        if sts_pairs is not None and sts_pairs < len(sts.scores):
            sts = StsPairs(sts.left[:sts_pairs], sts.right[:sts_pairs], sts.scores[:sts_pairs])
        return cls(sts, list(texts))


@dataclass(frozen=True)
class Served:
    """One model's embeddings of the quality inputs, as served."""

    left: FloatArray
    right: FloatArray
    texts: FloatArray


def embed_over_grpc(address: str, inputs: QualityInputs) -> Served:
    """Embed STS-B pairs and the agreement texts through the real client (normalized, float32)."""
    options = ClientOptions(timeout_s=600.0, max_texts_per_request=64, max_concurrent_requests=4)
    with EmbedderClient(address, options) as client:
        return Served(
            client.embed(inputs.sts.left), client.embed(inputs.sts.right), client.embed(inputs.texts)
        )


def scores(served: Served, inputs: QualityInputs, teacher: Served | None) -> dict[str, float]:
    """STS-B dev Spearman x 100 and, when the teacher's embeddings are known, agreement with it."""
    cosines = (served.left * served.right).sum(axis=1)
    out = {"stsb_dev_spearman": 100.0 * spearman(cosines, inputs.sts.scores)}
    if teacher is not None:
        n_pairs = min(20000, len(inputs.texts) * 10)
        out.update(teacher_agreement(served.texts, teacher.texts, n_pairs=n_pairs, k=10))
    return out
