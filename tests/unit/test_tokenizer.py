"""Tokenizer wrapper: truncation keeps [CLS] ... [SEP], counts, truncate=false, per-batch padding."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.core.bundle import Bundle
from embedder.core.tokenizer import TextTokenizer, pad_batch
from embedder.errors import InvalidInputError

CLS, SEP = 101, 102


@pytest.fixture(scope="module")
def tok(bundle: Bundle) -> TextTokenizer:
    m = bundle.manifest
    return TextTokenizer.from_file(bundle.tokenizer_path, m.max_tokens, m.pad_token_id)


def test_short_text_has_special_tokens_and_no_padding(tok: TextTokenizer) -> None:
    enc = tok.encode(["hello world", "a"])
    assert enc.ids[0][0] == CLS and enc.ids[0][-1] == SEP
    assert enc.token_counts == [4, 3]  # [CLS] hello world [SEP] / [CLS] a [SEP]
    assert enc.truncated == []


def test_long_text_is_truncated_to_max_tokens_keeping_sep(tok: TextTokenizer) -> None:
    long_text = " ".join(["music"] * (tok.max_tokens * 2))
    enc = tok.encode([long_text])
    assert enc.token_counts == [tok.max_tokens]
    assert enc.ids[0][0] == CLS and enc.ids[0][-1] == SEP
    assert enc.truncated == [0]


def test_truncate_false_rejects_long_text_naming_it(tok: TextTokenizer) -> None:
    texts = ["fine", " ".join(["music"] * (tok.max_tokens * 2))]
    with pytest.raises(InvalidInputError, match=r"texts\[1\].*max_tokens"):
        tok.encode(texts, truncate=False)
    tok.encode(["fine"], truncate=False)


def test_bundle_padding_settings_are_ignored(tok: TextTokenizer) -> None:
    # The teacher's tokenizer.json pads to 128; the wrapper must not.
    assert len(tok.encode(["hi"]).ids[0]) == 3


def test_pad_batch_right_pads_to_longest() -> None:
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == np.int64 and mask.dtype == np.int64
