"""The embedding cache as a data structure: keys, LRU eviction within a byte bound, what it is charged."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from embedder.core.cache import MAX_CACHED_CHARS, EmbeddingCache
from embedder.errors import ConfigError

DIM = 384


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_a_hit_is_the_stored_row_bit_for_bit_with_its_token_count() -> None:
    cache = EmbeddingCache(10 * 2**20)
    data = rows(3)
    cache.put_many("sha-a", True, ["x", "y", "z"], data, [5, 6, 7])
    found = cache.get_many("sha-a", True, ["y", "new", "x"])
    assert found[1] is None
    assert found[0] is not None and found[2] is not None
    assert found[0].array().tobytes() == data[1].tobytes() and found[0].tokens == 6
    assert found[2].array().tobytes() == data[0].tobytes() and found[2].tokens == 5
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 1, 3)


def test_another_model_or_truncation_setting_never_sees_the_entry() -> None:
    cache = EmbeddingCache(10 * 2**20)
    cache.put_many("sha-a", True, ["x"], rows(1), [5])
    assert cache.get_many("sha-b", True, ["x"]) == [None]
    assert cache.get_many("sha-a", False, ["x"]) == [None]
    assert cache.get_many("sha-a", True, ["x"])[0] is not None


def test_a_cached_text_keeps_its_first_vector() -> None:
    cache = EmbeddingCache(10 * 2**20)
    first, second = rows(1, seed=1), rows(1, seed=2)
    cache.put_many("m", True, ["x"], first, [3])
    cache.put_many("m", True, ["x"], second, [3])
    entry = cache.get_many("m", True, ["x"])[0]
    assert entry is not None and entry.array().tobytes() == first[0].tobytes()
    assert len(cache) == 1


def test_least_recently_used_entries_go_first_and_the_bound_holds() -> None:
    texts = [f"item {i}" for i in range(10)]
    one = EmbeddingCache(2**30)
    one.put_many("m", True, texts[:1], rows(1), [3])
    per_entry = one.stats().bytes
    cache = EmbeddingCache(4 * per_entry + per_entry // 2)  # room for 4 entries
    cache.put_many("m", True, texts[:4], rows(4), [3] * 4)
    cache.get_many("m", True, [texts[0]])  # item 0 is now the most recently used
    cache.put_many("m", True, texts[4:6], rows(2), [3] * 2)
    present = [t for t in texts[:6] if cache.get_many("m", True, [t])[0] is not None]
    assert present == [texts[0], texts[3], texts[4], texts[5]]
    stats = cache.stats()
    assert stats.evictions == 2 and stats.entries == 4 and stats.bytes <= stats.capacity_bytes


def test_the_charge_covers_what_the_entries_really_use() -> None:
    """tracemalloc: the bytes charged are at least what the entries (texts included) allocate, and at
    most 15% more (so `embedding_cache_mb` is both a bound and close to the real footprint)."""
    cache = EmbeddingCache(2**30)
    n = 5000
    data = rows(n)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        texts = [f"catalogue item {i}: a title and a description of twenty to forty words" for i in range(n)]
        for i in range(0, n, 32):
            cache.put_many("sha", True, texts[i : i + 32], data[i : i + 32], [40] * len(texts[i : i + 32]))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    charged = cache.stats().bytes
    assert used <= charged <= 1.15 * used, (used, charged)


def test_a_zero_or_negative_size_is_off_or_refused() -> None:
    assert EmbeddingCache.of_mb(0) is None
    cache = EmbeddingCache.of_mb(1.5)
    assert cache is not None and cache.capacity_bytes == int(1.5 * 2**20)
    with pytest.raises(ConfigError, match="must be > 0"):
        EmbeddingCache(0)


def test_texts_longer_than_the_cap_are_neither_stored_nor_looked_up() -> None:
    cache = EmbeddingCache(10 * 2**20)
    long = "word " * (MAX_CACHED_CHARS // 5 + 1)
    cache.put_many("sha-a", True, [long, "short"], rows(2), [128, 3])
    found = cache.get_many("sha-a", True, [long, "short"])
    assert found[0] is None and found[1] is not None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 0, 1)
