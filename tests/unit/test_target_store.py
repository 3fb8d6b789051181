"""The content-addressed teacher store: only missing texts are computed, lookups keep input order, a
re-opened store sees earlier chunks, another namespace's folder is refused."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from training.target_store import TargetStore


def _encoder(calls: list[list[str]]):  # type: ignore[no-untyped-def]
    def encode(texts: list[str]) -> np.ndarray:
        calls.append(list(texts))
        return np.stack([np.full(4, len(t), np.float32) for t in texts])

    return encode


def test_only_missing_texts_are_computed_and_lookup_keeps_order(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    store = TargetStore(tmp_path, "teacher@8", 4)
    assert store.ensure(["a", "bb", "a"], _encoder(calls), chunk=1) == 2
    assert calls == [["a"], ["bb"]]
    assert store.ensure(["bb", "ccc"], _encoder(calls)) == 1
    assert calls[-1] == ["ccc"]
    np.testing.assert_array_equal(store.lookup(["ccc", "a"])[:, 0], [3, 1])
    with pytest.raises(KeyError, match="dddd"):
        store.lookup(["dddd"])


def test_reopened_store_resumes_and_namespaces_do_not_mix(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    TargetStore(tmp_path, "teacher@8", 4).ensure(["x", "yy"], _encoder(calls))
    again = TargetStore(tmp_path, "teacher@8", 4)
    assert len(again) == 2 and again.missing(["x", "yy", "z"]) == ["z"]
    assert not list(tmp_path.glob("*.tmp.npz"))
    with pytest.raises(ValueError, match="teacher@16"):
        TargetStore(tmp_path, "teacher@16", 4)


def test_ranks_opening_the_store_at_once_never_read_a_half_written_header(tmp_path: Path) -> None:
    # torchrun ranks open the same store together; the header used to be truncated and rewritten in place
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            for _ in range(300):
                TargetStore(tmp_path, "teacher@8", 4)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
