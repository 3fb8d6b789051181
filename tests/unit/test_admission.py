"""Admission counts the tokenizer's backlog too (issue 14, defect 2): pure bookkeeping, no event loop."""

from __future__ import annotations

import pytest

from embedder.core.admission import Admission
from embedder.errors import OverloadedError


def test_characters_waiting_for_the_tokenizer_are_bounded() -> None:
    admission = Admission(capacity=100, max_chars=1000)
    admission.claim(1, queued=0, chars=800)
    with pytest.raises(OverloadedError, match=r"tokenizer busy: 800 characters waiting to be tokenized, 300"):
        admission.claim(1, queued=0, chars=300)
    assert (admission.reserved, admission.arriving, admission.chars) == (
        1,
        1,
        800,
    )  # the refusal held nothing
    admission.tokenized(800)
    admission.claim(1, queued=0, chars=300)
    assert admission.chars == 300


def test_a_request_alone_is_always_admitted() -> None:
    admission = Admission(capacity=100, max_chars=1000)
    admission.claim(1, queued=0, chars=5000)  # nothing else is waiting: refusing it would refuse it forever
    with pytest.raises(OverloadedError):
        admission.claim(1, queued=0, chars=1)


def test_no_bound_when_zero() -> None:
    admission = Admission(capacity=100)
    for _ in range(10):
        admission.claim(1, queued=0, chars=10**6)
