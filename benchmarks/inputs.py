"""Benchmark inputs: named text sets, their token-length distribution, and fixed-length token batches.

Sets (`--inputs`, or `--texts FILE` for a user's own catalogue):
- `items` (default): what the ranking pipeline sends, catalogue items of 20-40 words, built at run time
  from the registry data installed on this machine: each Debian package with a long description as
  "Synopsis. First paragraph of the description." (apt's Translation-en lists; the readers are the
  training corpus's own, `training.corpus_natural`). Only items in the held-out split of the training
  corpus's hash rule are kept (`training.corpus.is_heldout`, seed and fraction of the default training
  config), so no benchmarked text is a training text; their paragraphs alone may be.
- `heldout`: the held-out split of the built training corpus (`.cache/corpus/cnn5m/heldout.jsonl`):
  shorter texts, mostly glosses and description paragraphs.
- a file: JSONL (`text`, or `title` + `description`) or TXT (one text per line).
A missing set falls back (items -> heldout -> STS-B dev sentences) and `Inputs.note` says so: every
figure of a run names the set it was measured on.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from training.corpus_readers import SourceMissingError, read_user_file
from training.evaluate import load_sts

REPO_ROOT = Path(__file__).resolve().parent.parent
HELDOUT = REPO_ROOT / ".cache" / "corpus" / "cnn5m" / "heldout.jsonl"
# The split rule's seed and fraction come from the config that trains the default model.
CORPUS_CONFIG = REPO_ROOT / "training" / "configs" / "cnn5m.toml"
APT_LISTS = Path("/var/lib/apt/lists")
INPUT_SETS = ("items", "heldout")
ITEM_WORDS = (20, 40)
# Buckets of the token-length table (tokens incl. [CLS]/[SEP]); the last one is cut to max_tokens.
LENGTH_BUCKETS = ((1, 16), (17, 32), (33, 64), (65, 128), (129, 10**9))

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Inputs:
    """Texts in a fixed random order; `name` is the set they are (after any fallback)."""

    texts: list[str]
    name: str
    source: str
    note: str

    def describe(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self.texts).encode("utf-8")).hexdigest()[:16]
        return {
            "set": self.name,
            "source": self.source,
            "note": self.note,
            "count": len(self.texts),
            "texts_sha256": digest,
        }

    def label(self) -> str:
        """One line for a report: set, count and source."""
        return f"set `{self.name}`: {len(self.texts)} texts, {self.source}"


def load_inputs(
    n: int,
    seed: int = 0,
    *,
    input_set: str = "items",
    texts_file: Path | None = None,
    heldout: Path = HELDOUT,
    apt_lists: Path = APT_LISTS,
) -> Inputs:
    """Up to `n` distinct texts of a set (or of `texts_file`), shuffled with `seed`."""
    if texts_file is not None:
        return Inputs(_sample(read_user_file(texts_file), n, seed), "file", str(texts_file), "your catalogue")
    if input_set not in INPUT_SETS:
        raise ValueError(f"input set {input_set!r}: must be one of {list(INPUT_SETS)} or --texts FILE")
    fallback = ""
    if input_set == "items":
        try:
            return Inputs(_sample(item_texts(apt_lists), n, seed), "items", ITEMS_SOURCE, ITEMS_NOTE)
        except SourceMissingError as exc:
            fallback = f"fallback from set items ({exc}); "
    if heldout.is_file():
        with heldout.open(encoding="utf-8") as fh:
            texts = [json.loads(line)["text"] for line in fh if line.strip()]
        source = _shown(heldout)
        return Inputs(_sample(texts, n, seed), "heldout", source, fallback + "held-out split of the corpus")
    pairs = load_sts("dev")
    note = fallback + f"{_shown(heldout)} not built (CI); STS-B dev is not in training"
    return Inputs(_sample(pairs.left + pairs.right, n, seed), "stsb-dev", "STS-B dev sentences", note)


ITEMS_SOURCE = "Debian packages: synopsis + first description paragraph, 20-40 words (apt Translation-en)"
ITEMS_NOTE = "catalogue-like items, held out from training by the corpus split rule"


def _shown(path: Path) -> str:
    """A path as a report prints it: relative to the repository when inside it."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _sample(texts: Iterable[str], n: int, seed: int) -> list[str]:
    """The first `n` distinct non-blank texts after a `seed`-ed shuffle."""
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    random.Random(seed).shuffle(unique)
    return unique[:n]


def item_texts(apt_lists: Path = APT_LISTS, *, heldout_only: bool = True) -> list[str]:
    """Debian items of 20-40 words, by default only the held-out ones (SourceMissingError without
    apt's lists). All of them (~30,000) serve measurements of speed alone (the cache benchmark)."""
    from training.corpus import is_heldout, load_corpus_config, text_digest
    from training.corpus_natural import debian_item_pairs, item_text

    corpus = load_corpus_config(CORPUS_CONFIG)
    lo, hi = ITEM_WORDS
    out: list[str] = []
    seen: set[str] = set()
    for synopsis, description in debian_item_pairs(apt_lists):
        text = item_text(synopsis, description)
        folded = text.casefold()
        if not lo <= len(text.split()) <= hi or folded in seen:
            continue
        seen.add(folded)
        if not heldout_only or is_heldout(text_digest(text, corpus.seed), corpus.heldout_fraction):
            out.append(text)
    if not out:
        raise SourceMissingError(f"no held-out Debian items of {lo}-{hi} words in {apt_lists}")
    return out


def requests_of(texts: Sequence[str], size: int) -> list[list[str]]:
    """Consecutive requests of `size` texts (the tail that does not fill one is dropped)."""
    if len(texts) < size:
        raise ValueError(f"need at least {size} texts for one request, got {len(texts)}")
    return [list(texts[i : i + size]) for i in range(0, len(texts) - size + 1, size)]


def _tokenizer(path: Path, max_tokens: int | None) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    if max_tokens:
        tok.enable_truncation(max_length=max_tokens)
    else:
        tok.no_truncation()
    return tok


def token_lengths(tokenizer_path: Path, texts: Sequence[str]) -> IntArray:
    """Untruncated token count of each text, special tokens included (as the server counts them)."""
    encodings = _tokenizer(tokenizer_path, None).encode_batch(list(texts))
    return np.asarray([len(e.ids) for e in encodings], dtype=np.int64)


def length_stats(lengths: IntArray, max_tokens: int) -> dict[str, Any]:
    """Percentiles, mean, share per length bucket, and the share cut at `max_tokens`."""
    pct = np.percentile(lengths, [10, 50, 90, 99])
    buckets = {
        f"{lo}-{hi}" if hi < 10**9 else f">{lo - 1}": float(np.mean((lengths >= lo) & (lengths <= hi)))
        for lo, hi in LENGTH_BUCKETS
    }
    return {
        "texts": len(lengths),
        "mean": float(lengths.mean()),
        "p10": float(pct[0]),
        "p50": float(pct[1]),
        "p90": float(pct[2]),
        "p99": float(pct[3]),
        "max": int(lengths.max()),
        "truncated_share": float(np.mean(lengths > max_tokens)),
        "buckets": buckets,
    }


def fixed_length_batch(
    tokenizer_path: Path, texts: Sequence[str], batch: int, seq_len: int
) -> tuple[IntArray, IntArray]:
    """`batch` rows of exactly `seq_len` real tokens: the texts' word pieces run on, framed like a text.

    Real token ids (not random ones) keep the embedding lookups' cache behaviour realistic.
    """
    tok = _tokenizer(tokenizer_path, None)
    frame = tok.encode("").ids  # e.g. [CLS, SEP]; empty for tokenizers without a post-processor
    head, tail = frame[:1], frame[1:]
    body = seq_len - len(head) - len(tail)
    stream: list[int] = []
    for enc in tok.encode_batch(list(texts), add_special_tokens=False):
        stream.extend(enc.ids)
        if len(stream) >= batch * body:
            break
    if len(stream) < body:
        raise ValueError(f"texts hold fewer than {body} tokens")
    rows = [head + [stream[(r * body + i) % len(stream)] for i in range(body)] + tail for r in range(batch)]
    ids = np.asarray(rows, dtype=np.int64)
    return ids, np.ones_like(ids)
