"""Explain: the exact decomposition of an embedding and of a cosine similarity into token terms.

Why it is exact: the CNN pools its per-position features f_t with a masked mean over the n real
positions and then applies one Linear layer, so

    e = W (1/n Σ_t f_t) + b = Σ_t c_t + b,     c_t = W f_t / n   (the explain graph's output)

Positions are merged into *units*: each word (its WordPiece pieces summed, grouped by the tokenizer's
word ids), each special token ([CLS], [SEP]) on its own, and the bias b as a "[bias]" pseudo-token.
So e = Σ_u v_u exactly, and for a query q = Σ_i a_i and a candidate c = Σ_j d_j

    cos(q, c) = Σ_i Σ_j a_i·d_j / (|q| |c|)

Pair terms P_ij = a_i·d_j / (|q||c|); a query unit's contribution is its row sum a_i·c / (|q||c|), a
candidate unit's its column sum. Both lists, and all pair terms, sum to the similarity. Single-text
saliency explains q against itself: contribution a_i·q / |q|², summing to 1 (each unit's share of the
embedding along its own direction). Matryoshka truncation is a prefix of every vector, so it commutes.

Everything here is numpy on float64 (the model runs float32; sums in float64 keep completeness far
below the 1e-4 the API promises). See docs/explain.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embedder.core.tokenizer import TokenSpans

F64 = npt.NDArray[np.float64]

# Mirrors streamrec.embedder.v1.AttributionKind (this module does not depend on the wire format).
WORD, SPECIAL, BIAS = 0, 1, 2
BIAS_TEXT = "[bias]"


@dataclass(frozen=True)
class Unit:
    """A word of the text (pieces merged), a special token, or the bias."""

    text: str
    kind: int
    char_start: int = 0
    char_end: int = 0
    pieces: tuple[str, ...] = ()


@dataclass(frozen=True)
class TextAttribution:
    """One text's units in text order ([CLS], words, [SEP], [bias]) and their contributions."""

    units: list[Unit]
    contributions: F64
    token_count: int
    truncated: bool


@dataclass(frozen=True)
class Explanation:
    similarity: float
    query: TextAttribution
    candidate: TextAttribution | None
    # (query unit index, candidate unit index, term), largest first; word x word pairs only.
    top_pairs: list[tuple[int, int, float]]


def group_units(spans: TokenSpans, text: str) -> tuple[list[Unit], npt.NDArray[np.intp]]:
    """Units of a text (the bias last) and, for every token position, the index of its unit."""
    units: list[Unit] = []
    index = np.empty(len(spans.ids), dtype=np.intp)
    last_word: int | None = None
    for pos, (piece, (start, end), word) in enumerate(
        zip(spans.pieces, spans.offsets, spans.word_ids, strict=True)
    ):
        if word is not None and word == last_word:
            prev = units[-1]
            lo, hi = min(prev.char_start, start), max(prev.char_end, end)
            units[-1] = Unit(text[lo:hi], WORD, lo, hi, (*prev.pieces, piece))
        elif word is None:
            units.append(Unit(piece, SPECIAL))
        else:
            units.append(Unit(text[start:end], WORD, start, end, (piece,)))
        last_word = word
        index[pos] = len(units) - 1
    units.append(Unit(BIAS_TEXT, BIAS))
    return units, index


def unit_vectors(contrib: npt.ArrayLike, bias: npt.ArrayLike, index: npt.NDArray[np.intp]) -> F64:
    """Sum per-position contributions [T, d] into per-unit vectors [units, d]; the bias is the last unit.

    `contrib` may be longer than `index` (batch padding): padded rows are zero and are ignored.
    """
    rows = np.asarray(contrib, dtype=np.float64)[: len(index)]
    n_units = int(index.max()) + 2 if len(index) else 1
    out = np.zeros((n_units, rows.shape[1]), dtype=np.float64)
    np.add.at(out, index, rows)
    out[-1] = np.asarray(bias, dtype=np.float64)
    return out


def _norm(v: F64) -> float:
    return float(np.sqrt(v @ v))


def pair_terms(q_units: F64, c_units: F64) -> tuple[float, F64, F64, F64]:
    """(cosine, query contributions, candidate contributions, pair matrix) of two unit decompositions."""
    q, c = q_units.sum(axis=0), c_units.sum(axis=0)
    scale = _norm(q) * _norm(c)
    if scale < 1e-24:  # a zero embedding: the server normalises it to zero, so cosine is 0
        zeros = np.zeros((len(q_units), len(c_units)))
        return 0.0, zeros.sum(axis=1), zeros.sum(axis=0), zeros
    pairs = (q_units @ c_units.T) / scale
    return float(q @ c / scale), q_units @ c / scale, c_units @ q / scale, pairs


def self_terms(units: F64) -> tuple[float, F64]:
    """(1, each unit's share of the embedding along its own direction) for single-text saliency."""
    e = units.sum(axis=0)
    sq = float(e @ e)
    if sq < 1e-24:
        return 0.0, np.zeros(len(units))
    contrib = units @ e / sq
    return float(contrib.sum()), contrib


def top_word_pairs(
    pairs: F64, q_units: list[Unit], c_units: list[Unit], k: int
) -> list[tuple[int, int, float]]:
    """The k largest word x word terms (special tokens and the bias are reported per unit instead)."""
    qi = np.array([i for i, u in enumerate(q_units) if u.kind == WORD], dtype=np.intp)
    cj = np.array([j for j, u in enumerate(c_units) if u.kind == WORD], dtype=np.intp)
    if k <= 0 or not len(qi) or not len(cj):
        return []
    sub = pairs[np.ix_(qi, cj)].ravel()
    order = np.argsort(-sub, kind="stable")[:k]
    return [(int(qi[f // len(cj)]), int(cj[f % len(cj)]), float(sub[f])) for f in order]


@dataclass(frozen=True)
class TextTerms:
    """What the model gave for one text, ready for `explain`: units and their vectors."""

    units: list[Unit]
    vectors: F64
    token_count: int
    truncated: bool


def text_terms(
    spans: TokenSpans, text: str, contrib: npt.ArrayLike, bias: npt.ArrayLike, dims: int = 0
) -> TextTerms:
    """Group one text's per-position contributions into units, keeping the first `dims` values (0 = all)."""
    units, index = group_units(spans, text)
    vectors = unit_vectors(contrib, bias, index)
    if 0 < dims < vectors.shape[1]:
        vectors = vectors[:, :dims]
    return TextTerms(units, vectors, len(spans.ids), spans.truncated)


def explain(query: TextTerms, candidate: TextTerms | None, top_pairs: int) -> Explanation:
    """Decompose cos(query, candidate), or the query's own embedding when `candidate` is None."""
    if candidate is None:
        sim, contrib = self_terms(query.vectors)
        return Explanation(sim, _attribution(query, contrib), None, [])
    sim, q_contrib, c_contrib, pairs = pair_terms(query.vectors, candidate.vectors)
    top = top_word_pairs(pairs, query.units, candidate.units, top_pairs)
    return Explanation(sim, _attribution(query, q_contrib), _attribution(candidate, c_contrib), top)


def _attribution(terms: TextTerms, contrib: F64) -> TextAttribution:
    return TextAttribution(terms.units, contrib, terms.token_count, terms.truncated)
