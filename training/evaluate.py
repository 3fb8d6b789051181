"""Quality metrics, numpy only, over any `encode(texts) -> [n, dim]` function.

Torch-free on purpose: the training job calls these on the student in process, the benchmark calls them
through the gRPC path (quality of what is actually served).

- STS-B dev Spearman x 100 between cosine similarity and the gold score.
- Teacher agreement on held-out texts: Spearman between student and teacher cosines over random pairs,
  and the mean overlap of each text's 10-nearest-neighbour sets.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Encoder = Callable[[Sequence[str]], np.ndarray]

REPO_ROOT = Path(__file__).resolve().parent.parent
STSB_DIR = REPO_ROOT.parent / "shared" / "data" / "stsb"


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    # Boundaries of runs of equal values.
    starts = np.r_[0, np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1]
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e - 1) / 2.0
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rankdata(np.asarray(a, dtype=np.float64)), rankdata(np.asarray(b, dtype=np.float64))
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class StsPairs:
    left: list[str]
    right: list[str]
    scores: np.ndarray


def load_sts(split: str = "dev", stsb_dir: Path = STSB_DIR) -> StsPairs:
    """STS-B pairs from ../shared/data/stsb (tab-separated; score in column 5, sentences in 6 and 7)."""
    left, right, scores = [], [], []
    with (stsb_dir / f"sts-{split}.csv").open(encoding="utf-8") as fh:
        for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            scores.append(float(row[4]))
            left.append(row[5])
            right.append(row[6])
    return StsPairs(left, right, np.asarray(scores))


def sts_spearman(encode: Encoder, pairs: StsPairs) -> float:
    """Spearman x 100 of cosine(left, right) against the gold scores."""
    a = l2_normalize(encode(pairs.left))
    b = l2_normalize(encode(pairs.right))
    return 100.0 * spearman((a * b).sum(axis=1), pairs.scores)


def pair_agreement(student: np.ndarray, teacher: np.ndarray, n_pairs: int, seed: int = 0) -> float:
    """Spearman between student and teacher cosines over `n_pairs` random distinct pairs."""
    s, t = l2_normalize(student), l2_normalize(teacher)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(s), n_pairs)
    j = (i + rng.integers(1, len(s), n_pairs)) % len(s)
    return spearman((s[i] * s[j]).sum(axis=1), (t[i] * t[j]).sum(axis=1))


def knn_overlap(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Mean |kNN_student(x) ∩ kNN_teacher(x)| / k over all texts (self excluded), cosine similarity."""
    s, t = l2_normalize(student), l2_normalize(teacher)
    return float(np.mean([len(a & b) / k for a, b in zip(_knn(s, k), _knn(t, k), strict=True)]))


def _knn(x: np.ndarray, k: int, block: int = 1024) -> list[set[int]]:
    out: list[set[int]] = []
    for start in range(0, len(x), block):
        sims = x[start : start + block] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, rows + start] = -np.inf
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        out.extend(set(map(int, r)) for r in top)
    return out


def teacher_agreement(
    student: np.ndarray, teacher: np.ndarray, n_pairs: int = 20000, k: int = 10
) -> dict[str, float]:
    return {
        "agreement_spearman": pair_agreement(student, teacher, n_pairs),
        "knn10_overlap": knn_overlap(student, teacher, k),
    }
