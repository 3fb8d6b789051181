"""Long texts are tokenized only as far as their kept tokens reach (issue 14, defect 2), with exactly the
ids, truncation flags and (for Explain) offsets that tokenizing the whole text gives.

The equality is a property of where `tokenizer_prefix.PrefixCutter` cuts; hypothesis searches for a
counter-example among texts built from the pieces most likely to break it (accents and combining marks,
characters the normalizer drops or expands, CJK, added tokens and halves of them, over-long words,
every kind of whitespace), at small `max_tokens` and prefix sizes so every path is taken.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Encoding, Tokenizer

from embedder.config import DEFAULT_BUNDLE
from embedder.core.tokenizer import TextTokenizer
from embedder.core.tokenizer_prefix import PrefixCutter
from embedder.errors import InvalidInputError

TOKENIZER_JSON = Path(__file__).resolve().parents[2] / DEFAULT_BUNDLE / "tokenizer.json"
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

PIECES = [
    *[
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "unbelievable",
        "tokenization",
        "streaming",
    ],
    *["naïve", "café", "Ünïcödé", "İstanbul", "ΣΟΦΟΣ", "straße", "ﬁne", "Å", "ǅ"],
    *(" ", "  ", "\t", "\n", "\r", "\u00a0", "\u2003", "\u3000", "\x1c", "\x85", "\u2028"),
    *("\x00", "\x07", "\u200b", "\u200d", "\ufeff", "\ufffd", "\u0301", "\u0308", "\u20dd"),
    *(".", ",", "!", "?", "-", "'", '"', "(", ")", "$", "+", "<", "=", "^", "`", "|", "~", "[", "]", "#"),
    *("。", "、", "—", "¿", "«", "»", "…", "·"),
    *("中", "文", "字", "東京", "한국어", "日本語のテキスト", "ไทย"),
    *("👍", "👩\u200d💻", "🇩🇪", "x" * 150, "a" * 99, "1234567890", "３４"),
    *("[MASK]", "[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MAS", "K]", "[", "CLS]", "[mask]"),
]
texts_st = st.one_of(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=60).map("".join),
    st.text(min_size=1, max_size=300),
)


def reference(max_tokens: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(TOKENIZER_JSON))
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    return tok


def tokenizer(max_tokens: int, prefix_chars: int) -> TextTokenizer:
    # The `tokenizers` path (what non-ASCII texts take); the ASCII fast path has tests of its own.
    return TextTokenizer(
        Tokenizer.from_file(str(TOKENIZER_JSON)), max_tokens, 0, prefix_chars, fast_path=False
    )


REFERENCES = {n: reference(n) for n in (3, 5, 12, 40)}
CUT = {(n, c): tokenizer(n, c) for n in REFERENCES for c in (1, 7, 30)}


@settings(PROPERTY, max_examples=500)
@given(
    texts=st.lists(texts_st, min_size=1, max_size=6),
    max_tokens=st.sampled_from(sorted(REFERENCES)),
    prefix_chars=st.sampled_from([1, 7, 30]),
)
def test_ids_and_truncation_equal_the_whole_texts(
    texts: list[str], max_tokens: int, prefix_chars: int
) -> None:
    whole: list[Encoding] = REFERENCES[max_tokens].encode_batch(texts)
    got = CUT[(max_tokens, prefix_chars)].encode(texts)
    assert got.ids == [e.ids for e in whole]
    assert got.truncated == [i for i, e in enumerate(whole) if e.overflowing]


@settings(PROPERTY, max_examples=500)
@given(
    text=texts_st, max_tokens=st.sampled_from(sorted(REFERENCES)), prefix_chars=st.sampled_from([1, 7, 30])
)
def test_explain_spans_equal_the_whole_text(text: str, max_tokens: int, prefix_chars: int) -> None:
    whole = REFERENCES[max_tokens].encode(text)
    got = CUT[(max_tokens, prefix_chars)].spans(text)
    assert got.ids == whole.ids and got.offsets == list(whole.offsets)
    assert got.pieces == whole.tokens and got.truncated == bool(whole.overflowing)


class RecordingTokenizer:
    """The real tokenizer, recording how many characters each encode call was given."""

    def __init__(self) -> None:
        self.real = Tokenizer.from_file(str(TOKENIZER_JSON))
        self.chars: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def encode_batch_fast(self, texts: list[str]) -> list[Encoding]:
        self.chars += [len(t) for t in texts]
        return self.real.encode_batch_fast(texts)  # type: ignore[no-any-return]


def test_a_long_text_is_tokenized_only_as_far_as_its_kept_tokens() -> None:
    """512 texts of 20,000 characters (the adversarial run: 3.8 s to tokenize whole, for 128 tokens
    each): each is tokenized from a prefix of at most 8 characters per kept token plus one word."""
    recorder = RecordingTokenizer()
    tok = TextTokenizer(recorder, 128, 0, fast_path=False)  # type: ignore[arg-type]
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "near",
        "a",
        "streaming",
        "recommender",
    ]
    text = " ".join(words[i % len(words)] for i in range(5000))[:20000]
    got = tok.encode([text] * 512)
    assert got.token_counts == [128] * 512 and got.truncated == list(range(512))
    assert recorder.chars and max(recorder.chars) <= 8 * 128 + 20, max(recorder.chars)
    assert got.ids[0] == reference(128).encode(text).ids


def test_a_prefix_without_enough_tokens_grows_until_it_has_them() -> None:
    """Mostly whitespace: the first prefix holds no token at all, so it cannot stand in for the text."""
    recorder = RecordingTokenizer()
    tok = TextTokenizer(recorder, 16, 0, prefix_chars=32, fast_path=False)  # type: ignore[arg-type]
    text = " " * 300 + " ".join(["word"] * 40)
    assert tok.encode([text]).ids == [reference(16).encode(text).ids]
    assert recorder.chars == [32, 128, len(text)]  # 512 > len(text) = 499: the last try is all of it


def test_an_unknown_tokenizer_pipeline_is_tokenized_whole() -> None:
    from tokenizers import pre_tokenizers

    tok = Tokenizer.from_file(str(TOKENIZER_JSON))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert PrefixCutter.for_tokenizer(tok, 100) is None


@pytest.mark.parametrize("text", ["a\ud800b", "\udcff"])
def test_a_lone_surrogate_is_invalid_input_naming_the_text(text: str) -> None:
    """`streamrec-embedder embed` with a non-UTF-8 argument gets one of these (surrogateescape)."""
    with pytest.raises(
        InvalidInputError, match=r"texts\[1\]: holds a lone surrogate \(U\+D[8C]\w\w at character"
    ):
        CUT[(12, 30)].encode(["fine", text])
