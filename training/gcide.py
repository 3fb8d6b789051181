"""GCIDE (Debian's dict-gcide) as corpus texts: one "Headword: definition" per sense, markup stripped.

The dictd files are `gcide.index` (headword, base64 offset, base64 length per line) and
`gcide.dict.dz` (dictzip, readable as plain gzip). An entry is a header line (headword, pronunciation,
part of speech, bracketed etymology), then numbered senses "1." with sub-senses "(a)", compounds
"{Apple butter}, a sauce ...", and blank-line-separated quotations, notes and synonym lists, which are
skipped. Source tags ("[1913 Webster]"), citations ("--Shak."), braces and accent codes ("a["e]ro",
"[a^]") are removed.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

from training.corpus_readers import SourceMissingError, normalize

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SENSE = re.compile(r"^\s*(?:\d+\.|\([a-z]\))\s+")
_TAG_LINE = re.compile(r"^\s*\[[^\]]*\]\s*$")
_BRACKET = re.compile(r"\[([^\[\]]{0,40})\]")
_ACCENT = re.compile(r"[\"=.*~`']?([a-zA-Z])[\^~`']?")
_CITATION = re.compile(r"\s--(?=\S).*$")
_LABEL = re.compile(r"^(?:\((?:[A-Z][^()]{0,30}|[a-z][^()]{0,20}\.)\)\s*|pl\.\s+)+")
_GRAMMAR = re.compile(r"^\s*(?:(?:(?!pl\.)[a-z]{1,5}\.|&|,|;)\s*)+")
_PLURAL = re.compile(r"^\s*pl\.[^\n\[]*")
_DERIVED = re.compile(r"\s--\s+\S*[*\"`]\S*.*$")  # trailing derived forms: "-- Su`per*im`po*si"tion, n."
_SKIP_BLOCK = ("Note:", "Syn:", "Syn.", "Usage:", "Usage.")
_QUOTE_INDENT = 8


def _b64(value: str) -> int:
    number = 0
    for char in value:
        number = number * 64 + _B64.index(char)
    return number


def _bracket(match: re.Match[str]) -> str:
    code = match.group(1)
    if code == "deg":
        return "°"
    if code in ("ae", "AE", "oe", "OE", "ng"):
        return code
    if len(code) == 3 and code.endswith("um"):  # umlauts: [aum] -> a
        return code[0]
    accent = _ACCENT.fullmatch(code)
    # Anything else bracketed in a definition is a usage tag ("[Obs.]", "[Colloq. U.S.]"): dropped.
    return accent.group(1) if accent else ""


def clean_markup(text: str) -> str:
    """Plain text of a GCIDE fragment: accents resolved, tags/braces/citations/labels removed."""
    text = normalize(_BRACKET.sub(_bracket, text))
    text = _DERIVED.sub("", _CITATION.sub("", text)).replace("{", "").replace("}", "")
    text = _LABEL.sub("", text)
    text = normalize(text).replace("( ", "(").replace(" ,", ",").replace(" .", ".")
    return text.lstrip(" .,;:")


def _skip_bracket(text: str) -> str:
    """`text` after the balanced [...] group it starts with (all of it if unbalanced)."""
    depth = 0
    for index, char in enumerate(text):
        depth += (char == "[") - (char == "]")
        if depth == 0:
            return text[index + 1 :]
    return ""


def _split_header(block: str) -> tuple[str, str]:
    """(headword, the first block minus its header: headword line, grammar, bracketed etymology)."""
    headword = block.split(" \\", 1)[0].split(",", 1)[0]
    first_line = block.split("\n", 1)[0]
    rest = block[first_line.rfind("\\") + 1 :]  # after the last pronunciation "\\Ap"ple\\"
    while True:
        stripped = _PLURAL.sub("", _GRAMMAR.sub("", re.sub(r"^[ \t,]*\([^()]*\)", "", rest)))
        if stripped.lstrip().startswith("["):
            stripped = _skip_bracket(stripped.lstrip())
        if stripped == rest:
            break
        rest = stripped
    return clean_markup(headword), rest


def _senses(block: str) -> Iterator[str]:
    """Each numbered/lettered sense in a block, or the block itself if it has none."""
    current: list[str] = []
    for line in block.splitlines():
        if _TAG_LINE.match(line):
            continue
        if _SENSE.match(line) and current:
            yield " ".join(current)
            current = []
        current.append(_SENSE.sub("", line))
    if current:
        yield " ".join(current)


def _compound(block: str) -> tuple[str, str]:
    """("Apple butter", "a sauce made of ...") from "{Apple butter}, a sauce made of ..."."""
    term, _, rest = block.partition("}")
    rest = re.sub(r"^(?:\s*\([^)]*\)|\s*,?\s*(?:or\s+)?\{[^}]*\})*\s*,?", "", rest)
    return clean_markup(term), rest


def _is_definition(term: str, definition: str) -> bool:
    # Cross-references ("See Lineage.") and leftovers of unparsed markup are not worth training on.
    return (
        bool(term)
        and len(definition.split()) >= 2
        and not definition.startswith("See ")
        and ("\\" not in definition)
    )


def parse_entry(entry: str) -> list[str]:
    """Texts ("Headword: definition") for every sense and compound of one dictionary entry."""
    blocks = [b for b in re.split(r"\n[ \t]*\n", entry.strip("\n")) if b.strip()]
    if not blocks or " \\" not in blocks[0].split("\n", 1)[0]:
        return []
    headword, first_rest = _split_header(blocks[0])
    texts: list[str] = []
    for block in [first_rest, *blocks[1:]]:
        stripped = block.strip()
        indent = len(block.lstrip("\n")) - len(block.lstrip("\n").lstrip(" "))
        if not stripped or stripped.startswith(_SKIP_BLOCK) or _TAG_LINE.match(stripped):
            continue
        if indent >= _QUOTE_INDENT and not _SENSE.match(block.lstrip("\n")):
            continue  # a quotation illustrating the sense above
        term, body = _compound(stripped) if stripped.startswith("{") else (headword, block)
        for sense in _senses(body):
            definition = clean_markup(sense)
            if _is_definition(term, definition):
                texts.append(f"{term}: {definition}")
    return texts


def gcide_files(dict_dir: Path) -> tuple[Path, Path]:
    """(gcide.index, gcide.dict.dz) in a dictd data directory."""
    index, data = dict_dir / "gcide.index", dict_dir / "gcide.dict.dz"
    if not (index.is_file() and data.is_file()):
        raise SourceMissingError(f"no gcide.index/gcide.dict.dz in {dict_dir}; install dict-gcide")
    return index, data


def read_gcide(dict_dir: Path) -> Iterator[str]:
    """Definitions of every GCIDE entry, in file order (entries listed under several headwords once)."""
    index, data = gcide_files(dict_dir)
    spans: set[tuple[int, int]] = set()
    with index.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            if len(fields) == 3 and not fields[0].startswith("00-database"):
                spans.add((_b64(fields[1]), _b64(fields[2])))
    with gzip.open(data) as fh:
        raw = fh.read()
    for offset, length in sorted(spans):
        yield from parse_entry(raw[offset : offset + length].decode("utf-8", errors="replace"))
