"""The stand-in checks' arithmetic: nDCG@10, compositional scores, natural-text parsing."""

from __future__ import annotations

import numpy as np

from training.checks import compositional_scores, ndcg_at_10
from training.corpus_natural import _Paragraphs, item_text, parse_fortunes, split_sentences


def test_ndcg_is_one_for_perfect_retrieval_and_lower_when_the_document_ranks_second() -> None:
    docs = np.eye(5, dtype=np.float32)
    assert ndcg_at_10(docs, docs) == 1.0
    queries = docs.copy()
    queries[0] = docs[1] * 2 + docs[0]  # query 0 prefers document 1 over its own
    assert abs(ndcg_at_10(queries, docs) - (4 + 1 / np.log2(3)) / 5) < 1e-9


def test_compositional_scores_against_the_teacher() -> None:
    rng = np.random.default_rng(0)
    left, right = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    kinds = ["negation"] * 20 + ["swap"] * 20
    same = compositional_scores((left, right), (left, right), kinds)
    assert abs(same["comp_spearman_all"] - 1.0) < 1e-9 and abs(same["comp_drop_ratio_negation"] - 1.0) < 1e-9
    # A student that sees every edit as a paraphrase: no drop at all.
    blind = compositional_scores((left, left), (left, right), kinds)
    assert blind["comp_drop_ratio_all"] < 1e-6 and blind["comp_mean_cos_all"] > 0.999


def test_sentences_fortunes_items_and_html_paragraphs() -> None:
    assert split_sentences("Mr. Smith went home. He slept! Did he? yes.") == [
        "Mr. Smith went home.",
        "He slept!",
        "Did he? yes.",
    ]
    lines = ["A fortune\n", "on two lines.\n", "\t\t-- Somebody\n", "%\n", "Second.\n"]
    assert list(parse_fortunes(lines)) == ["A fortune on two lines.", "Second."]
    assert item_text("tiny text editor", "Edits text.") == "Tiny text editor. Edits text."
    parser = _Paragraphs()
    parser.feed("<p>Use <code>len()</code> here.</p><pre>x = 1</pre><p>Two.</p>")
    assert parser.paragraphs == ["Use len() here.", "Two."]
