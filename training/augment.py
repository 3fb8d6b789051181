"""Augmentations of the student's token ids (the teacher's target stays the clean text's).

All work on one text's WordPiece ids *without* the [CLS]/[SEP] wrappers, as numpy int arrays, so the
batch collator can apply them cheaply. They are the main regulariser: the student must map damaged
views of a text to the teacher's embedding of the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    p_augment: float
    token_mask_rate: float
    span_delete_max: int
    crop_min_fraction: float
    word_dropout_rate: float
    mask_token_id: int


def word_starts(ids: np.ndarray, is_continuation: np.ndarray) -> np.ndarray:
    """Indices where a new word begins (a piece not starting with '##')."""
    return np.flatnonzero(~is_continuation[ids])


def token_mask(ids: np.ndarray, rate: float, mask_id: int, rng: np.random.Generator) -> np.ndarray:
    out = ids.copy()
    out[rng.random(len(ids)) < rate] = mask_id
    return out


def span_delete(ids: np.ndarray, max_len: int, rng: np.random.Generator) -> np.ndarray:
    if len(ids) <= max_len + 2:
        return ids
    span = int(rng.integers(1, max_len + 1))
    start = int(rng.integers(0, len(ids) - span))
    return np.concatenate([ids[:start], ids[start + span :]])


def crop(ids: np.ndarray, min_fraction: float, rng: np.random.Generator) -> np.ndarray:
    n = len(ids)
    keep = max(1, int(np.ceil(n * rng.uniform(min_fraction, 1.0))))
    start = int(rng.integers(0, n - keep + 1))
    return ids[start : start + keep]


def word_dropout(
    ids: np.ndarray, rate: float, is_continuation: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Drop whole words (a start piece and its '##' continuations) with probability `rate` each."""
    starts = word_starts(ids, is_continuation)
    if len(starts) < 3:
        return ids
    word_of = np.cumsum(~is_continuation[ids]) - 1
    dropped = rng.random(len(starts)) < rate
    keep = ~dropped[np.clip(word_of, 0, len(starts) - 1)]
    return ids[keep] if keep.any() else ids


def augment(
    ids: np.ndarray, cfg: AugmentConfig, is_continuation: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One random augmentation (or none, with probability 1 - p_augment)."""
    if len(ids) < 4 or rng.random() >= cfg.p_augment:
        return ids
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return token_mask(ids, cfg.token_mask_rate, cfg.mask_token_id, rng)
    if kind == 1:
        return span_delete(ids, cfg.span_delete_max, rng)
    if kind == 2:
        return crop(ids, cfg.crop_min_fraction, rng)
    return word_dropout(ids, cfg.word_dropout_rate, is_continuation, rng)
