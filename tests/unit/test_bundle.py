"""The bundle's manifest: every file the server reads is hashed, and a mistyped field is a one-line error.

Issue 14, defects 3 and 4: a tokenizer.json with two vocabulary ids swapped used to load and serve altered
vectors (only the ONNX files were hashed), and `"dim": "384"` printed a traceback instead of one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from embedder.cli import main
from embedder.config import DEFAULT_BUNDLE
from embedder.core.bundle import (
    MANIFEST_FILE,
    TOKENIZER_FILE,
    TYPE_CHECKS,
    Bundle,
    Manifest,
    file_sha256,
    load_bundle,
)
from embedder.errors import BundleError

COMMITTED = Path(__file__).resolve().parents[2] / DEFAULT_BUNDLE


def _copy(bundle: Bundle, tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    shutil.copytree(bundle.path, root)
    return root


def _edit_manifest(root: Path, **fields: Any) -> None:
    raw = json.loads((root / MANIFEST_FILE).read_text())
    raw.update(fields)
    (root / MANIFEST_FILE).write_text(json.dumps({k: v for k, v in raw.items() if v is not _DROP}))


_DROP = object()


def swap_two_vocabulary_ids(root: Path) -> None:
    """What the adversarial run did: the same words, two of their ids exchanged."""
    tok = json.loads((root / TOKENIZER_FILE).read_text())
    vocab = tok["model"]["vocab"]
    vocab["the"], vocab["a"] = vocab["a"], vocab["the"]
    (root / TOKENIZER_FILE).write_text(json.dumps(tok))


@pytest.mark.parametrize("where", ["fixture", "committed"])
def test_every_file_of_a_bundle_is_hashed_by_its_manifest(bundle: Bundle, where: str) -> None:
    loaded = bundle if where == "fixture" else load_bundle(COMMITTED)
    files = {p.name for p in loaded.path.iterdir() if p.is_file()} - {MANIFEST_FILE}
    hashed = loaded.manifest.hashed_files()
    assert set(hashed) == files
    assert all(file_sha256(loaded.path / name) == sha for name, sha in hashed.items())


def test_a_tokenizer_with_two_ids_swapped_is_refused(bundle: Bundle, tmp_path: Path) -> None:
    root = _copy(bundle, tmp_path)
    swap_two_vocabulary_ids(root)
    with pytest.raises(BundleError, match=r"tokenizer\.json sha256 \w+… does not match manifest"):
        load_bundle(root)


def test_a_format_1_bundle_still_loads_and_says_its_tokenizer_is_unverified(
    bundle: Bundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _copy(bundle, tmp_path)
    _edit_manifest(root, format_version=1, tokenizer_sha256=_DROP)
    with caplog.at_level(logging.WARNING, logger="embedder.core.bundle"):
        old = load_bundle(root)
    assert old.manifest.format_version == 1 and TOKENIZER_FILE not in old.manifest.hashed_files()
    assert "does not hash tokenizer.json" in caplog.text


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"tokenizer_sha256": _DROP}, "format_version 2 needs tokenizer_sha256"),
        ({"format_version": 1}, "tokenizer_sha256 needs format_version 2"),
        ({"format_version": 3}, "format_version 3 is not supported"),
        ({"format_version": "2"}, "format_version '2' is not supported"),
    ],
)
def test_format_and_tokenizer_hash_must_agree(
    bundle: Bundle, tmp_path: Path, fields: dict[str, Any], reason: str
) -> None:
    root = _copy(bundle, tmp_path)
    _edit_manifest(root, **fields)
    with pytest.raises(BundleError, match=reason):
        load_bundle(root)


# The four the adversarial run tried, and the rest of the kinds of field.
MISTYPED = [  # (field, value, what the error says)
    ("dim", "384", "must be an integer"),
    ("max_tokens", "128", "must be an integer"),
    ("matryoshka_dims", 64, "must be a list of integers"),
    ("sha256", 5, "must be a string"),
    ("dim", True, "must be an integer"),
    ("dim", 384.0, "must be an integer"),
    ("pad_token_id", None, "must be an integer"),
    ("name", ["x"], "must be a string"),
    ("matryoshka_dims", ["64"], "must be a list of integers"),
    ("extra_outputs", [1], "must be a list of strings"),
    ("source", "x", "must be a JSON object"),
    ("metrics", {"stsb": "high"}, "must be a JSON object of numbers"),
    ("tokenizer_sha256", "abc", "must be 64 lowercase hex digits"),
    ("explain_sha256", "A" * 64, "must be 64 lowercase hex digits"),
]


@pytest.mark.parametrize("case", MISTYPED, ids=[f"{f}={v!r}" for f, v, _ in MISTYPED])
def test_a_mistyped_manifest_field_is_one_line_and_exit_1(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: tuple[str, object, str]
) -> None:
    field, value, reason = case
    root = _copy(bundle, tmp_path)
    _edit_manifest(root, **{field: value})
    assert main(["info", "--bundle", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("streamrec-embedder: error: bundle "), err
    assert f"manifest field {field!r} {reason}" in err, err


def test_every_manifest_field_has_a_type_check() -> None:
    assert {str(f.type) for f in dataclasses.fields(Manifest)} <= set(TYPE_CHECKS)
