"""Show an explanation to a person: coloured words in a terminal (ANSI), or a self-contained HTML heatmap.

Both views colour each word of the original text by its contribution, on one scale shared by the two
texts (the largest |word contribution| = full colour): warm for words that raise the similarity, blue
for words that lower it. Special tokens and the bias are listed as numbers, not painted into the text.
No dependencies beyond the standard library, so the serve install stays light.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from embedder.config import ServerConfig
from embedder.core.bundle import load_bundle
from embedder.explain.attribution import WORD, Explanation, TextAttribution
from embedder.explain.explainer import Explainer, ExplainOptions

RESET = "\x1b[0m"


@dataclass(frozen=True)
class Segment:
    """A run of the original text: a word with its contribution, or the text between words (None)."""

    text: str
    value: float | None


def segments(text: str, attr: TextAttribution) -> list[Segment]:
    """The whole original text cut into words and gaps; words past a truncation are one plain gap."""
    out: list[Segment] = []
    at = 0
    for unit, value in zip(attr.units, attr.contributions.tolist(), strict=True):
        if unit.kind != WORD:
            continue
        if unit.char_start > at:
            out.append(Segment(text[at : unit.char_start], None))
        out.append(Segment(text[unit.char_start : unit.char_end], value))
        at = unit.char_end
    if at < len(text):
        out.append(Segment(text[at:], None))
    return out


def scale_of(ex: Explanation) -> float:
    """The largest |word contribution| in either text (the full-colour value); 1 if there is none."""
    values = [abs(v) for _, v in _words(ex.query)]
    if ex.candidate is not None:
        values += [abs(v) for _, v in _words(ex.candidate)]
    return max(values, default=0.0) or 1.0


def rgb(value: float, scale: float) -> tuple[int, int, int]:
    """White -> orange-red for positive values, white -> blue for negative ones."""
    a = min(1.0, abs(value) / scale)
    if value >= 0:
        return 255, round(255 - 135 * a), round(255 - 225 * a)
    return round(255 - 215 * a), round(255 - 125 * a), 255


def _words(attr: TextAttribution) -> Iterator[tuple[str, float]]:
    for unit, value in zip(attr.units, attr.contributions.tolist(), strict=True):
        if unit.kind == WORD:
            yield unit.text, value


def others_line(attr: TextAttribution) -> str:
    return "  ".join(
        f"{u.text} {v:+.4f}"
        for u, v in zip(attr.units, attr.contributions.tolist(), strict=True)
        if u.kind != WORD
    )


# -- terminal ----------------------------------------------------------------------------------------


def ansi_text(text: str, attr: TextAttribution, scale: float, color: bool = True) -> str:
    """The text with each word on a 24-bit background; without colour, words carry [value] tags."""
    parts = []
    for seg in segments(text, attr):
        if seg.value is None:
            parts.append(seg.text)
        elif color:
            r, g, b = rgb(seg.value, scale)
            parts.append(f"\x1b[38;2;0;0;0m\x1b[48;2;{r};{g};{b}m{seg.text}{RESET}")
        else:
            parts.append(f"{seg.text}[{seg.value:+.3f}]")
    return "".join(parts)


def ansi_report(ex: Explanation, query: str, candidate: str, color: bool = True) -> str:
    """What `streamrec-embedder explain` prints."""
    scale = scale_of(ex)
    title = "similarity" if ex.candidate is not None else "self-similarity (single-text saliency)"
    lines = [f"{title}: {ex.similarity:.4f}", "", "query:     " + ansi_text(query, ex.query, scale, color)]
    lines.append("           " + others_line(ex.query))
    if ex.candidate is not None:
        lines += ["candidate: " + ansi_text(candidate, ex.candidate, scale, color)]
        lines.append("           " + others_line(ex.candidate))
    if ex.top_pairs and ex.candidate is not None:
        lines += ["", "top word pairs:"]
        for i, j, v in ex.top_pairs:
            lines.append(f"  {v:+.4f}  {ex.query.units[i].text}  <->  {ex.candidate.units[j].text}")
    return "\n".join(lines) + "\n"


# -- HTML --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;max-width:60rem;color:#222}
.text{font-size:1.25rem;line-height:2.2rem;padding:.6rem .8rem;border:1px solid #ddd;border-radius:6px}
.w{padding:.15rem .2rem;border-radius:3px}
.meta{color:#555;font-size:.9rem}
table{border-collapse:collapse;margin-top:.5rem}td,th{padding:.2rem .7rem;border-bottom:1px solid #eee}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;padding:.1rem .5rem;margin-right:.3rem;border-radius:3px}
"""


def _html_text(text: str, attr: TextAttribution, scale: float) -> str:
    out = []
    for seg in segments(text, attr):
        if seg.value is None:
            out.append(html.escape(seg.text))
            continue
        r, g, b = rgb(seg.value, scale)
        out.append(
            f'<span class="w" style="background:rgb({r},{g},{b})" title="{seg.value:+.5f}">'
            f"{html.escape(seg.text)}</span>"
        )
    return "".join(out)


def _legend(scale: float) -> str:
    stops = (-scale, -scale / 2, 0.0, scale / 2, scale)
    cells = "".join(f'<span style="background:rgb{rgb(v, scale)}">{v:+.3f}</span>' for v in stops)
    return f'<p class="legend meta">word contribution: {cells}</p>'


def html_report(ex: Explanation, query: str, candidate: str, model: str = "") -> str:
    """A self-contained page (inline CSS, no scripts, no external assets)."""
    scale = scale_of(ex)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>streamrec-embedder explain</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h2>similarity {ex.similarity:.4f}</h2>",
        f"<p class='meta'>model {html.escape(model)}; contributions sum to the similarity exactly "
        "(words + special tokens + bias).</p>",
        _legend(scale),
        "<h3>query</h3>",
        f"<div class='text'>{_html_text(query, ex.query, scale)}</div>",
        f"<p class='meta'>{html.escape(others_line(ex.query))}</p>",
    ]
    if ex.candidate is not None:
        parts += [
            "<h3>candidate</h3>",
            f"<div class='text'>{_html_text(candidate, ex.candidate, scale)}</div>",
            f"<p class='meta'>{html.escape(others_line(ex.candidate))}</p>",
        ]
    if ex.top_pairs and ex.candidate is not None:
        rows = "".join(
            f"<tr><td class='n'>{v:+.4f}</td><td>{html.escape(ex.query.units[i].text)}</td>"
            f"<td>{html.escape(ex.candidate.units[j].text)}</td></tr>"
            for i, j, v in ex.top_pairs
        )
        parts.append(
            "<h3>top word pairs</h3><table><tr><th>term</th><th>query</th><th>candidate</th></tr>"
            f"{rows}</table>"
        )
    parts.append("</body></html>\n")
    return "".join(parts)


# -- CLI: `streamrec-embedder explain` -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", help="the text to explain")
    parser.add_argument("candidate", nargs="?", default="", help="compare with this (omit: saliency)")
    parser.add_argument("--top-pairs", type=int, default=10, help="word pairs to list (0..256)")
    parser.add_argument("--dimensions", type=int, default=0, help="Matryoshka truncation (0 = full)")
    parser.add_argument("--html", type=Path, default=None, help="also write a self-contained heatmap page")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="ANSI colours")


def run_cli(config: ServerConfig, args: argparse.Namespace) -> int:
    """Explain in-process (no server) and print; `--html` also writes the page."""
    bundle = load_bundle(config.bundle)
    explainer = Explainer(bundle, config.max_text_chars)
    try:
        options = ExplainOptions(top_pairs=args.top_pairs, dimensions=args.dimensions)
        result = explainer.run(args.query, args.candidate, options)
    finally:
        explainer.close()
    color = args.color == "always" or (
        args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    sys.stdout.write(ansi_report(result.explanation, args.query, args.candidate, color))
    if args.html is not None:
        page = html_report(result.explanation, args.query, args.candidate, bundle.manifest.name)
        args.html.write_text(page, encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0
