"""`streamrec-embedder explain`: coloured words in a terminal, a self-contained HTML heatmap."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from embedder.cli import main
from embedder.core.bundle import Bundle

ANSI_BG = re.compile(r"\x1b\[48;2;(\d+);(\d+);(\d+)m([^\x1b]*)\x1b\[0m")


def test_terminal_colours_every_word(bundle: Bundle, capsys: pytest.CaptureFixture[str]) -> None:
    q, c = "a man plays the guitar", "guitar music on stage"
    assert main(["explain", "--bundle", str(bundle.path), "--color", "always", q, c]) == 0
    out = capsys.readouterr().out
    assert out.startswith("similarity: ")
    painted = [m.group(4) for m in ANSI_BG.finditer(out)]
    assert painted == q.split() + c.split()
    assert "[CLS] " in out and "[bias] " in out and "top word pairs:" in out


def test_no_colour_when_not_a_terminal(bundle: Bundle, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--bundle", str(bundle.path), "naïve café"]) == 0  # stdout is captured: no tty
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert out.startswith("self-similarity (single-text saliency): 1.0000")
    assert re.search(r"naïve\[[+-]\d\.\d{3}\] café\[[+-]\d\.\d{3}\]", out), out


def test_html_heatmap_is_self_contained(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "explain.html"
    q, c = "<b>bold</b> & jazz", "jazz"
    assert main(["explain", "--bundle", str(bundle.path), "--html", str(page), q, c]) == 0
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert ">&lt;</span>" in html and ">&amp;</span>" in html and "<b>" not in html  # the text is escaped
    assert html.count('class="w"') == 11  # the pre-tokenizer's words: < b > bold < / b > & jazz, jazz
    for external in ("http://", "https://", "<script", "<link", "<img", "url("):
        assert external not in html
    assert f"wrote {page}" in capsys.readouterr().err


def test_bundle_without_explain_is_a_one_line_error(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedder.core.bundle import save_bundle

    fields = bundle.manifest.writer_fields()
    plain = save_bundle(tmp_path / "plain", bundle.model_path, bundle.tokenizer_path, **fields)
    assert main(["explain", "--bundle", str(plain.path), "a", "b"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not support Explain" in err
