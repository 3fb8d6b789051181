"""`streamrec-embedder embed` / `info` and the one-line error on a bad bundle."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedder.cli import build_parser, main
from embedder.config import ServerConfig
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine


def test_embed_args_to_json_lines(
    bundle: Bundle, reference: EmbeddingEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["embed", "--bundle", str(bundle.path), "first text", "second"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == ["first text", "second"]
    got = np.array([r["embedding"] for r in lines], dtype=np.float32)
    np.testing.assert_allclose(got, reference.embed_in_process(["first text", "second"]), atol=1e-6)


def test_embed_reads_stdin(
    bundle: Bundle, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\nthree\n"))
    assert main(["embed", "--bundle", str(bundle.path), "--dimensions", "64"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == ["one", "two", "three"]
    assert {len(r["embedding"]) for r in lines} == {64}


def test_info_prints_manifest_and_limits(bundle: Bundle, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--bundle", str(bundle.path), "--max-texts-per-request", "8"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["manifest"]["sha256"] == bundle.manifest.sha256
    assert info["limits"]["max_texts_per_request"] == 8


def test_bad_bundle_one_line_error(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle.path, broken)
    with (broken / "model.onnx").open("ab") as fh:
        fh.write(b"tampered")
    assert main(["serve", "--bundle", str(broken), "--port", "0", "--metrics-port", "-1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256" in err and err.startswith("streamrec-embedder: error:")
    assert main(["info", "--bundle", str(tmp_path / "missing")]) == 1
    assert "not found" in capsys.readouterr().err


def test_api_keys_are_never_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14, defect 9: `--api-keys k` put the key in every `ps` listing; keys come from the env or a
    file only (the env and file paths are tested against a real server in test_hardening_security.py).
    No abbreviations either: argparse would take `--api-keys k` as `--api-keys-file k`."""
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        flags = {flag for action in sub._actions for flag in action.option_strings}
        assert "--api-keys" not in flags and not sub.allow_abbrev, name
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["serve", "--api-keys", "secret-key"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --api-keys" in capsys.readouterr().err


def test_metrics_page_binds_loopback_by_default() -> None:
    """Issue 14, defect 9: /metrics (plaintext, no auth) bound 0.0.0.0 unless told otherwise."""
    assert ServerConfig().metrics_host == "127.0.0.1"
    assert build_parser().parse_args(["serve"]).metrics_host is None  # the default, not a flag value
