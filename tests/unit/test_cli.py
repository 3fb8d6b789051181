"""`streamrec-embedder embed` / `info` and the one-line error on a bad bundle."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedder.cli import main
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
