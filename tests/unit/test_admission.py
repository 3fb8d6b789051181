"""Admission counts the tokenizer's backlog too (issue 14, defect 2): pure bookkeeping, no event loop."""

from __future__ import annotations

import pytest

from embedder.core.admission import SMALL_REQUEST_CHARS, Admission
from embedder.errors import OverloadedError


def test_characters_waiting_for_the_tokenizer_are_bounded() -> None:
    admission = Admission(capacity=100, max_chars=10_000)
    admission.claim(1, queued=0, chars=8000)
    with pytest.raises(
        OverloadedError, match=r"tokenizer busy: 8000 characters waiting to be tokenized, 5000"
    ):
        admission.claim(1, queued=0, chars=5000)
    assert (admission.reserved, admission.arriving, admission.chars) == (
        1,
        1,
        8000,
    )  # the refusal held nothing
    admission.tokenized(8000)
    admission.claim(1, queued=0, chars=5000)
    assert admission.chars == 5000


def test_a_request_alone_is_always_admitted() -> None:
    admission = Admission(capacity=100, max_chars=10_000)
    admission.claim(1, queued=0, chars=50_000)  # nothing else is waiting: refusing it would refuse it forever
    with pytest.raises(OverloadedError):
        admission.claim(1, queued=0, chars=5000)


def test_no_bound_when_zero() -> None:
    admission = Admission(capacity=100)
    for _ in range(10):
        admission.claim(1, queued=0, chars=10**6)


def test_a_small_request_is_never_refused_for_the_backlog() -> None:
    admission = Admission(capacity=100, max_chars=1000)
    admission.claim(1, queued=0, chars=900)
    admission.claim(1, queued=0, chars=SMALL_REQUEST_CHARS)  # a short call behind a flood of long texts
    assert admission.chars == 900 + SMALL_REQUEST_CHARS
