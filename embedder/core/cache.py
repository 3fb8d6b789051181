"""The embedding cache: the model's raw output per text, so a popular item is embedded once.

Keyed by (bundle sha256, truncation setting, text): a vector of another model version, or of a text
cut differently, can never be returned. It stores what the model returned (float32, before
Matryoshka truncation, normalisation or any wire encoding), so those apply after it exactly as they do
to a fresh row, and the token count (the responses and metrics report it). Values are immutable bytes.

Bounded by bytes (`embedding_cache_mb`): each entry is charged its vector, its text and a measured
per-entry overhead (`ENTRY_OVERHEAD_BYTES`; tests/unit/test_cache.py checks the charge against
tracemalloc), and the least recently used entries are evicted to stay within the bound. One lock
guards it: the event loop and in-process callers may share it. Its counters are read by the metrics
module at scrape time, so the hot path only bumps integers.

What "identical with and without it" means: a hit returns the bits the model produced for that text
when it was first embedded. The model's own output for a text can differ in the last bits with the
other texts of its batch (the padded length changes the summation order: ~5e-7 here), so a cached
vector is bit-identical to an uncached one computed in the same batch, and never further from any
uncached one than two uncached runs are from each other.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embedder.errors import ConfigError

FloatArray = npt.NDArray[np.float32]
# Bytes per entry beyond its vector and its text: the key tuple, the entry tuple, the bytes object's
# header and the OrderedDict's slot (measured with tracemalloc on CPython 3.11; see the test).
ENTRY_OVERHEAD_BYTES = 240
# Longer texts are neither looked up nor stored (nor counted as hits or misses): they are not catalogue
# items re-ranked all day, hashing them would cost the event loop ~0.5 ms per 20,000 characters, and one
# request of 512 such texts would push ~10 MB of popular items out (issue 14's long-text flood).
MAX_CACHED_CHARS = 4096


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    bytes: int
    entries: int
    capacity_bytes: int


@dataclass(frozen=True, slots=True)
class Cached:
    """One text's raw model output and token count, as a lookup returns it."""

    vector: bytes  # float32, the model's output row
    tokens: int

    def array(self) -> FloatArray:
        return np.frombuffer(self.vector, dtype=np.float32)


_Key = tuple[str, bool, str]
# Stored as plain tuples of atomic values (vector bytes, token count), like the keys: CPython's collector
# untracks such tuples, so a large cache adds nothing to the full collections that the server's frozen
# heap avoids (docs/operations.md, "Memory and pauses").
_Entry = tuple[bytes, int]


class EmbeddingCache:
    """LRU of raw embeddings within `capacity_bytes`. Thread-safe."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ConfigError(f"embedding cache capacity must be > 0 bytes (got {capacity_bytes})")
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    @classmethod
    def of_mb(cls, mb: float) -> EmbeddingCache | None:
        """A cache of `mb` megabytes (2**20 bytes), or None for 0 (off)."""
        return cls(int(mb * 2**20)) if mb > 0 else None

    def get_many(self, model: str, truncate: bool, texts: Sequence[str]) -> list[Cached | None]:
        """Each text's entry (now most recently used), or None; counts hits and misses."""
        found: list[Cached | None] = []
        with self._lock:
            looked_up = 0
            for text in texts:
                if len(text) > MAX_CACHED_CHARS:
                    found.append(None)
                    continue
                looked_up += 1
                key = (model, truncate, text)
                entry = self._entries.get(key)
                if entry is None:
                    found.append(None)
                else:
                    self._entries.move_to_end(key)
                    found.append(Cached(*entry))
            hits = sum(e is not None for e in found)
            self._hits += hits
            self._misses += looked_up - hits
        return found

    def put_many(
        self, model: str, truncate: bool, texts: Sequence[str], rows: FloatArray, tokens: Sequence[int]
    ) -> None:
        """Store each text's raw row; a text already cached keeps its first vector. Evicts LRU entries."""
        with self._lock:
            for text, row, count in zip(texts, rows, tokens, strict=True):
                if len(text) > MAX_CACHED_CHARS:
                    continue
                key = (model, truncate, text)
                if key in self._entries:
                    self._entries.move_to_end(key)
                    continue
                entry = (np.asarray(row, dtype=np.float32).tobytes(), int(count))
                size = _charge(text, entry)
                if size > self.capacity_bytes:
                    continue
                self._entries[key] = entry
                self._bytes += size
                self._evict()

    def _evict(self) -> None:
        while self._bytes > self.capacity_bytes:
            (_, _, text), entry = self._entries.popitem(last=False)
            self._bytes -= _charge(text, entry)
            self._evictions += 1

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                self._evictions,
                self._bytes,
                len(self._entries),
                self.capacity_bytes,
            )

    def __len__(self) -> int:
        return len(self._entries)


def _charge(text: str, entry: _Entry) -> int:
    """What one entry costs in memory: its vector bytes, its text object, the fixed overhead."""
    return len(entry[0]) + sys.getsizeof(text) + ENTRY_OVERHEAD_BYTES
