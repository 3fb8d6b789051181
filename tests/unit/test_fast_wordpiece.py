"""The plain-ASCII fast path gives exactly the ids and truncation flags of `tokenizers`, and steps aside for
every text (and every tokenizer) it does not reproduce."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from embedder.config import DEFAULT_BUNDLE
from embedder.core.fast_wordpiece import FastWordPiece
from embedder.core.tokenizer import TextTokenizer
from embedder.errors import InvalidInputError
from tests.support import sample_texts

TOKENIZER = Path(DEFAULT_BUNDLE) / "tokenizer.json"
MAX_TOKENS = 32  # small, so that generated texts cross the truncation point often


@functools.cache
def _tokenizers() -> Tokenizer:
    tok = Tokenizer.from_file(str(TOKENIZER))
    tok.enable_truncation(max_length=MAX_TOKENS)
    return tok


def _reference(text: str) -> tuple[list[int], bool]:
    enc = _tokenizers().encode(text)
    return enc.ids, bool(enc.overflowing)


@pytest.fixture(scope="module")
def fast() -> FastWordPiece:
    made = FastWordPiece.for_tokenizer(Tokenizer.from_file(str(TOKENIZER)), MAX_TOKENS)
    assert made is not None  # the default bundle's tokenizer is BERT uncased WordPiece
    return made


# Printable ASCII weighted towards letters and spaces, with tab/newline/CR and the odd control or
# non-ASCII character (which must leave the fast path, not change its answer).
_ALPHABET = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + " " * 12)
    + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\t\n\r")
    + ["\x00", "\x0b", "\x1f", "\x7f", "é", "ß", "中", "\u00a0", "[MASK]", "[mask]", "[SEP]", "##", "x" * 101]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=120).map("".join))
def test_generated_texts_match_tokenizers(fast: FastWordPiece, text: str) -> None:
    got = fast.encode(text, cut_chars=40)
    if got is not None:  # None: the text goes to `tokenizers`, which is then the answer by definition
        assert got == _reference(text), text


def test_item_texts_match_tokenizers_and_take_the_fast_path(fast: FastWordPiece) -> None:
    texts = sample_texts(300, seed=11)
    taken = 0
    for text in texts:
        got = fast.encode(text, cut_chars=8 * MAX_TOKENS)
        if got is not None:
            taken += 1
            assert got == _reference(text), text
    assert taken >= 0.9 * len(texts)  # real English texts are nearly all plain ASCII


def test_long_texts_are_cut_where_tokenizers_cuts_them(fast: FastWordPiece) -> None:
    words = "catalogue item number 7 (refurbished), ships-in 2 days; unbelievably-cheap!"
    for text in [words * 50, " " * 5000 + words * 3, "a" * 300 + " " + words * 20, "x" * 5000]:
        assert fast.encode(text, cut_chars=64) == _reference(text)
    # Past the part that is read, a text may hold anything: it cannot change the kept pieces.
    tail = words * 10 + " caf\u00e9 [MASK] \x00\u4e2d"
    assert fast.encode(tail, cut_chars=200) == _reference(tail)
    assert fast.encode(tail, cut_chars=len(tail)) is None


def test_added_tokens_and_non_ascii_go_to_tokenizers(fast: FastWordPiece) -> None:
    for text in ["a [MASK] b", "[mask]", "caf\u00e9", "tab\x0bbed", "nul\x00l", "\u4e2d\u6587"]:
        assert fast.encode(text, cut_chars=64) is None


def test_a_tokenizer_of_another_pipeline_gets_no_fast_path(tmp_path: Path) -> None:
    config = json.loads(TOKENIZER.read_text())
    config["normalizer"] = {"type": "Lowercase"}
    other = tmp_path / "tokenizer.json"
    other.write_text(json.dumps(config))
    assert FastWordPiece.for_tokenizer(Tokenizer.from_file(str(other)), MAX_TOKENS) is None


def test_the_text_tokenizer_mixes_both_paths_in_input_order() -> None:
    tok = TextTokenizer.from_file(TOKENIZER, MAX_TOKENS, pad_token_id=0)
    texts = ["plain words here", "caf\u00e9 au lait", "long " * 40, "a [MASK] b", "x", "\u00e9t\u00e9 " * 40]
    encoded = tok.encode(texts)
    assert encoded.ids == [_reference(t)[0] for t in texts]
    assert encoded.truncated == [i for i, t in enumerate(texts) if _reference(t)[1]] == [2, 5]


def test_a_lone_surrogate_behind_fast_texts_is_named_by_its_place_in_the_request() -> None:
    tok = TextTokenizer.from_file(TOKENIZER, MAX_TOKENS, pad_token_id=0)
    with pytest.raises(
        InvalidInputError, match=r"texts\[2\]: holds a lone surrogate \(U\+D800 at character 2\)"
    ):
        tok.encode(["fine", "also fine", "a\ud800b"])
