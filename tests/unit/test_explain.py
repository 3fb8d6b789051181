"""Explain math and word merging (embedder/explain/attribution.py), on the real tokenizer and graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedder.core.bundle import Bundle, load_bundle, save_bundle
from embedder.core.engine import EmbeddingEngine, EmbedOptions
from embedder.core.tokenizer import TextTokenizer
from embedder.errors import BundleError, InvalidInputError
from embedder.explain.attribution import (
    BIAS,
    SPECIAL,
    WORD,
    group_units,
    pair_terms,
    self_terms,
    top_word_pairs,
)
from embedder.explain.explainer import Explainer, ExplainOptions

UNICODE = "Unbelievably  naïve Café-owners ❤ 東京タワー (x²) don't"


@pytest.fixture(scope="module")
def tok(bundle: Bundle) -> TextTokenizer:
    m = bundle.manifest
    return TextTokenizer.from_file(bundle.tokenizer_path, m.max_tokens, m.pad_token_id)


@pytest.fixture(scope="module")
def explainer(bundle: Bundle) -> Explainer:
    return Explainer(bundle, max_text_chars=20000)


def test_words_merge_pieces_and_map_back_to_the_original_text(tok: TextTokenizer) -> None:
    spans = tok.spans(UNICODE)
    units, index = group_units(spans, UNICODE)
    assert [u.kind for u in units[:1] + units[-2:]] == [SPECIAL, SPECIAL, BIAS]
    words = [u for u in units if u.kind == WORD]
    for u in words:
        assert UNICODE[u.char_start : u.char_end] == u.text
    texts = [u.text for u in words]
    assert texts[:3] == ["Unbelievably", "naïve", "Café"]
    assert {"❤", "東", "x²", "-", "don", "'", "t"} <= set(texts)  # words as the BERT pre-tokenizer cuts them
    assert next(u for u in words if u.text == "x²").pieces == ("x", "##²")
    multi = next(u for u in words if u.text == "Unbelievably")
    assert len(multi.pieces) > 1 and "".join(p.removeprefix("##") for p in multi.pieces) == "unbelievably"
    # Every token position belongs to exactly one unit, in text order.
    assert len(index) == len(spans.ids) and list(index) == sorted(index)
    assert index[0] == 0 and index[-1] == len(units) - 2


def test_truncated_text_lists_only_the_words_it_kept(tok: TextTokenizer) -> None:
    long_text = " ".join(f"w{i}" for i in range(200))
    spans = tok.spans(long_text)
    assert spans.truncated and len(spans.ids) == tok.max_tokens
    with pytest.raises(InvalidInputError, match=r"^candidate: .*max_tokens"):
        tok.spans(long_text, truncate=False, field="candidate")


def test_pair_terms_complete_and_consistent() -> None:
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(7, 16)), rng.normal(size=(5, 16))
    sim, rows, cols, pairs = pair_terms(q, c)
    qs, cs = q.sum(0), c.sum(0)
    assert sim == pytest.approx(qs @ cs / np.linalg.norm(qs) / np.linalg.norm(cs), abs=1e-12)
    assert rows.sum() == pytest.approx(sim, abs=1e-12)
    assert cols.sum() == pytest.approx(sim, abs=1e-12)
    np.testing.assert_allclose(pairs.sum(axis=1), rows, atol=1e-12)
    np.testing.assert_allclose(pairs.sum(axis=0), cols, atol=1e-12)
    one, share = self_terms(q)
    assert one == pytest.approx(1.0, abs=1e-12) and share.sum() == pytest.approx(1.0, abs=1e-12)


def test_zero_embedding_explains_to_zero() -> None:
    sim, rows, cols, _ = pair_terms(np.zeros((3, 4)), np.ones((2, 4)))
    assert sim == 0.0 and not rows.any() and not cols.any()


def test_top_pairs_are_word_pairs_largest_first(explainer: Explainer) -> None:
    ex = explainer.run("a red guitar on stage", "guitar solo on a red stage", ExplainOptions(top_pairs=5))
    pairs = ex.explanation.top_pairs
    assert len(pairs) == 5 and [v for *_, v in pairs] == sorted((v for *_, v in pairs), reverse=True)
    cand = ex.explanation.candidate
    assert cand is not None
    for i, j, _ in pairs:
        assert ex.explanation.query.units[i].kind == WORD and cand.units[j].kind == WORD
    full = explainer.run("a red guitar", "red guitar", ExplainOptions(top_pairs=100)).explanation
    assert len(full.top_pairs) == 3 * 2  # every word x word pair, no specials, no bias


def test_top_word_pairs_skip_special_units() -> None:
    from embedder.explain.attribution import Unit

    units = [Unit("[CLS]", SPECIAL), Unit("a", WORD), Unit("[bias]", BIAS)]
    pairs = np.array([[9.0, 1.0, 9.0], [1.0, 2.0, 1.0], [9.0, 1.0, 9.0]])
    assert top_word_pairs(pairs, units, units, 3) == [(1, 1, 2.0)]
    assert top_word_pairs(pairs, units, units, 0) == []


def test_explain_matches_the_served_embeddings(explainer: Explainer, reference: EmbeddingEngine) -> None:
    q, c = "the quick brown fox", "a lazy dog sleeps in the sun"
    emb = reference.embed_in_process([q, c])
    got = explainer.run(q, c).explanation
    assert got.similarity == pytest.approx(float(emb[0] @ emb[1]), abs=1e-5)
    emb64 = reference.embed_in_process([q, c], EmbedOptions(dimensions=64))
    got64 = explainer.run(q, c, ExplainOptions(dimensions=64)).explanation
    assert got64.similarity == pytest.approx(float(emb64[0] @ emb64[1]), abs=1e-5)
    alone = explainer.run(q, "", ExplainOptions(top_pairs=5)).explanation
    assert alone.candidate is None and alone.top_pairs == []
    assert alone.similarity == pytest.approx(1.0, abs=1e-9)
    assert alone.query.contributions.sum() == pytest.approx(1.0, abs=1e-9)


def test_bundle_verifies_the_explain_graph(bundle: Bundle, tmp_path: Path) -> None:
    assert bundle.explain_path is not None and bundle.explain_path.is_file()
    copy = tmp_path / "b"
    shutil.copytree(bundle.path, copy)
    with (copy / "explain.onnx").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match=r"explain\.onnx sha256"):
        load_bundle(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["explain_model"] = "../model.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="explain_model must be a file name"):
        load_bundle(copy)


def test_manifest_without_explain_keys_still_loads(bundle: Bundle, tmp_path: Path) -> None:
    """Bundles written before Explain existed (format_version 1, no explain keys) stay servable."""
    copy = tmp_path / "old"
    shutil.copytree(bundle.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for key in ("explain_model", "explain_sha256", "tokenizer_sha256"):
        del manifest[key]
    manifest["format_version"] = 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    old = load_bundle(copy)
    assert old.explain_path is None and old.manifest.format_version == 1


def test_save_bundle_without_explain(bundle: Bundle, tmp_path: Path) -> None:
    fields = bundle.manifest.writer_fields()
    plain = save_bundle(tmp_path / "plain", bundle.model_path, bundle.tokenizer_path, **fields)
    assert plain.explain_path is None and not (plain.path / "explain.onnx").exists()
