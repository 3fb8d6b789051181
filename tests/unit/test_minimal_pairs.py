"""Minimal-pair edits: each kind changes what it claims to, deterministically, and never returns a
text the corpus already has."""

from __future__ import annotations

import numpy as np
import pytest

from training.minimal_pairs import (
    Antonyms,
    change_number,
    edits_for_corpus,
    eligible,
    make_edits,
    negate,
    shuffle_words,
    swap_roles,
)

ANTONYMS = Antonyms({"big": ["small"], "man": ["woman"]}, adjectives=frozenset({"big", "young"}))


@pytest.mark.parametrize(
    ("text", "edited"),
    [
        ("A man is playing a guitar.", "A man is not playing a guitar."),
        ("A man is not playing a guitar.", "A man is playing a guitar."),
        ("The cat doesn't sleep.", "The cat does sleep."),
        ("There is no cat on the mat.", "There is a cat on the mat."),
        ("A dog runs fast.", "No dog runs fast."),
    ],
)
def test_negation_is_added_or_removed(text: str, edited: str) -> None:
    assert negate(text) == edited


def test_swap_roles_exchanges_the_nouns_of_two_phrases_past_adjectives() -> None:
    adjectives = frozenset({"big", "young"})
    assert swap_roles("A dog chases a cat.", adjectives) == "A cat chases a dog."
    assert swap_roles("A young man rides a big horse.", adjectives) == "A young horse rides a big man."
    assert swap_roles("A dog sleeps.", adjectives) is None


def test_number_and_antonym_and_shuffle_change_one_thing() -> None:
    rng = np.random.default_rng(0)
    edited = change_number("Two kids ate 12 apples.", rng)
    assert edited is not None and edited != "Two kids ate 12 apples." and "kids ate" in edited
    assert ANTONYMS.substitute("A big dog.", rng) == "A small dog."
    shuffled = shuffle_words("The quick brown fox jumps.", rng)
    words = ["The", "quick", "brown", "fox", "jumps."]
    assert shuffled is not None and sorted(shuffled.split()) == sorted(words)


def test_edits_are_deterministic_distinct_and_skip_existing_texts() -> None:
    text = "A man is playing a big guitar."
    first = make_edits(text, ANTONYMS, seed=1, max_edits=3)
    assert first == make_edits(text, ANTONYMS, seed=1, max_edits=3)
    assert len({e.text for e in first}) == len(first) == 3
    assert {e.kind for e in first} <= {"negation", "swap", "antonym", "number", "shuffle"}
    corpus = [text, "A man is not playing a big guitar."]
    out = list(edits_for_corpus(corpus, ANTONYMS, seed=1, fraction=1.0, max_edits=3))
    assert all(parent in (0, 1) for parent, _ in out)
    assert not {e.text for _, e in out} & set(corpus)


def test_dictionary_glosses_and_long_texts_are_not_eligible() -> None:
    assert eligible("A man is playing a guitar.")
    assert not eligible("guitar, axe: a stringed instrument")
    assert not eligible("too short")
    assert not eligible(" ".join(["word"] * 60))
