"""Benchmark inputs: real item texts, their token-length distribution, and fixed-length token batches.

Item texts come from the held-out split of the training corpus (never seen in training). A clean CI
checkout has no corpus, so the benchmark then falls back to STS-B dev sentences and says so in the report.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from training.evaluate import load_sts

REPO_ROOT = Path(__file__).resolve().parent.parent
HELDOUT = REPO_ROOT / ".cache" / "corpus" / "cnn5m" / "heldout.jsonl"
# Buckets of the token-length table (tokens incl. [CLS]/[SEP]); the last one is cut to max_tokens.
LENGTH_BUCKETS = ((1, 16), (17, 32), (33, 64), (65, 128), (129, 10**9))

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Inputs:
    """Item texts in a fixed random order; `source` names where they came from."""

    texts: list[str]
    source: str
    note: str

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "note": self.note, "count": len(self.texts)}


def load_inputs(n: int, seed: int = 0, heldout: Path = HELDOUT) -> Inputs:
    """Up to `n` distinct texts, shuffled with `seed`: held-out corpus texts, else STS-B dev sentences."""
    if heldout.is_file():
        with heldout.open(encoding="utf-8") as fh:
            texts = [json.loads(line)["text"] for line in fh if line.strip()]
        source, note = str(heldout.relative_to(REPO_ROOT)), "held-out split of the training corpus"
    else:
        pairs = load_sts("dev")
        texts = list(dict.fromkeys(pairs.left + pairs.right))
        source = "STS-B dev sentences"
        note = f"fallback: {heldout.relative_to(REPO_ROOT)} not built (CI); STS-B dev is not in training"
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    random.Random(seed).shuffle(texts)
    return Inputs(texts[:n], source, note)


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
