"""Tokenizer wrapper: truncation keeps [CLS] ... [SEP], counts, truncate=false, per-batch padding."""

from __future__ import annotations

import numpy as np
import pytest

from embedder.core.bundle import Bundle
from embedder.core.tokenizer import Encoded, TextTokenizer, pad_batch
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


def test_jobs_cut_a_large_request_into_slices_of_bounded_cost(tok: TextTokenizer) -> None:
    texts = ["word " * 5000] * 10 + ["short"] * 3  # a long text costs one prefix, not 25,000 chars
    prefix = tok.cost_chars(texts[:1])
    assert prefix < 25_000
    jobs = tok.jobs(texts, 3 * prefix)
    assert [len(job) for job in jobs] == [3, 3, 3, 4]
    assert [t for job in jobs for t in job] == texts
    assert [len(job) for job in tok.jobs(["x" * 100], 10)] == [1]  # never an empty slice


def test_joined_slices_encode_as_the_whole_request(tok: TextTokenizer) -> None:
    texts = ["a short one", "word " * 400, "another short text", "word " * 400, "end"]
    whole = tok.encode(texts)
    joined = Encoded.joined([tok.encode(job) for job in tok.jobs(texts, 50)])
    assert joined == whole and joined.truncated == [1, 3]
    with pytest.raises(InvalidInputError, match=r"texts\[1\]: longer than max_tokens=.* \(2 text"):
        tok.refuse_truncated(joined)
