"""The embedding cache in the engine: bit-identical answers, options applied after it, never another
model version's vector, truncate=false still enforced, the bypass option (in the core and on the wire),
and its metrics over gRPC.

"Bit-identical" is checked against an engine without a cache on the same batches: the model's output
for a text can differ in the last bits with its batch-mates (core/cache.py), so every comparison here
sends the same request shapes to both engines. One caller, one request at a time: each request is
one batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from embedder.client import AsyncEmbedderClient, ClientOptions, EmbedderClient
from embedder.core.bundle import Bundle, load_bundle
from embedder.core.cache import EmbeddingCache
from embedder.core.engine import EmbeddingEngine, EmbedOptions
from embedder.errors import InvalidInputError
from tests.integration.test_metrics import scrape, value
from tests.support import ServerThread, make_config, sample_texts

OPTIONS = (EmbedOptions(), EmbedOptions(normalize=False), EmbedOptions(dimensions=64))
Embed = Callable[[EmbeddingEngine, list[str], EmbedOptions], Awaitable[np.ndarray]]
Body = Callable[[Embed], Awaitable[None]]


def drive(engines: list[EmbeddingEngine], body: Body) -> None:
    """Start the engines on one loop, run `body(embed)`, close them (bounded: 60 s)."""

    async def embed(engine: EmbeddingEngine, texts: list[str], options: EmbedOptions) -> np.ndarray:
        return (await engine.embed(texts, options)).embeddings

    async def main() -> None:
        for engine in engines:
            engine.start()
        try:
            await body(embed)
        finally:
            for engine in engines:
                await engine.close()

    asyncio.run(asyncio.wait_for(main(), timeout=60))


def engine(bundle: Bundle, cache_mb: float = 0.0, cache: EmbeddingCache | None = None) -> EmbeddingEngine:
    return EmbeddingEngine(bundle, make_config(workers=1, embedding_cache_mb=cache_mb), cache=cache)


def test_hits_are_the_uncached_bits_and_every_option_applies_after_the_cache(bundle: Bundle) -> None:
    cached, plain = engine(bundle, cache_mb=16), engine(bundle)
    texts = sample_texts(8)

    async def body(embed: Embed) -> None:
        for options in OPTIONS * 2:  # the first call fills the cache, the other five are all hits
            got, want = await embed(cached, texts, options), await embed(plain, texts, options)
            assert got.tobytes() == want.tobytes(), options
        assert cached.cache is not None
        stats = cached.cache.stats()
        assert (stats.misses, stats.hits, stats.entries) == (8, 40, 8)
        # Half seen, half new: the seen rows are the first call's, the new ones what the model gives them.
        new = [f"{t} (second edition)" for t in texts[:4]]
        mixed = await embed(cached, texts[:4] + new, EmbedOptions())
        assert mixed[:4].tobytes() == (await embed(plain, texts, EmbedOptions()))[:4].tobytes()
        assert mixed[4:].tobytes() == (await embed(plain, new, EmbedOptions())).tobytes()

    drive([cached, plain], body)


def test_a_new_model_version_never_gets_the_old_versions_vector(bundle: Bundle, tmp_path: Path) -> None:
    from training.export import export_random_bundle

    other = load_bundle(export_random_bundle(tmp_path / "v2", seed=1))
    assert other.manifest.sha256 != bundle.manifest.sha256
    shared = EmbeddingCache(16 * 2**20)
    old, new, plain_new = engine(bundle, cache=shared), engine(other, cache=shared), engine(other)
    texts = sample_texts(6)

    async def body(embed: Embed) -> None:
        old_vectors = await embed(old, texts, EmbedOptions())
        new_vectors = await embed(new, texts, EmbedOptions())
        assert new_vectors.tobytes() == (await embed(plain_new, texts, EmbedOptions())).tobytes()
        assert not np.allclose(new_vectors, old_vectors)
        assert shared.stats().hits == 0 and shared.stats().entries == 12

    drive([old, new, plain_new], body)


def test_truncate_false_still_refuses_a_long_text_that_was_cached_truncated(bundle: Bundle) -> None:
    cached = engine(bundle, cache_mb=16)
    long_text = " ".join(["word"] * (cached.manifest.max_tokens + 20))

    async def body(embed: Embed) -> None:
        await embed(cached, [long_text], EmbedOptions())
        with pytest.raises(InvalidInputError, match="truncate=false"):
            await embed(cached, [long_text], EmbedOptions(truncate=False))

    drive([cached], body)


def test_the_bypass_option_neither_reads_nor_fills_the_cache(bundle: Bundle) -> None:
    cached, plain = engine(bundle, cache_mb=16), engine(bundle)
    texts = sample_texts(5)
    bypass = EmbedOptions(cache=False)

    async def body(embed: Embed) -> None:
        for _ in range(2):
            got, want = await embed(cached, texts, bypass), await embed(plain, texts, bypass)
            assert got.tobytes() == want.tobytes()
        assert cached.cache is not None
        stats = cached.cache.stats()
        assert (stats.hits, stats.misses, stats.entries) == (0, 0, 0)

    drive([cached, plain], body)


def test_cache_metrics_over_grpc(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server(embedding_cache_mb=8)
    texts = sample_texts(7)
    with EmbedderClient([srv.address]) as client:
        first = client.embed(texts)
        again = client.embed(texts)
    assert first.tobytes() == again.tobytes()
    families = scrape(srv.metrics_url)
    p = "streamrec_embedder_cache_"
    assert value(families, p + "hits_total", p + "hits_total") == 7
    assert value(families, p + "misses_total", p + "misses_total") == 7
    assert value(families, p + "entries", p + "entries") == 7
    assert value(families, p + "capacity_bytes", p + "capacity_bytes") == 8 * 2**20
    assert 7 * 4 * srv.running.engine.manifest.dim < value(families, p + "bytes", p + "bytes") < 2**20
    assert value(families, p + "evictions_total", p + "evictions_total") == 0


def _cache_counters(srv: ServerThread) -> tuple[float, ...]:
    """(hits, misses, entries) from the server's /metrics."""
    p = "streamrec_embedder_cache_"
    families = scrape(srv.metrics_url)
    return tuple(value(families, p + n, p + n) for n in ("hits_total", "misses_total", "entries"))


def test_a_bypassed_call_over_grpc_leaves_the_cache_alone(start_server: Callable[..., ServerThread]) -> None:
    """A real server with the cache on: `cache=false` on the wire (both clients' `ClientOptions`) neither
    fills the cache nor reads it, so its counters stand still, and the vectors are bit for bit those
    the cache serves (one caller, the same request shape: the same batches)."""
    srv = start_server(embedding_cache_mb=8)
    texts = sample_texts(7, seed=5)
    bypass = ClientOptions(cache=False)

    async def embed_async() -> np.ndarray:
        async with AsyncEmbedderClient([srv.address], bypass) as client:
            return await client.embed(texts)

    with EmbedderClient([srv.address], bypass) as client:
        into_empty = client.embed(texts)
    assert _cache_counters(srv) == (0, 0, 0)  # not filled
    with EmbedderClient([srv.address]) as client:
        missed, hit = client.embed(texts), client.embed(texts)
    assert _cache_counters(srv) == (7, 7, 7)
    with EmbedderClient([srv.address], bypass) as client:
        bypassed = client.embed(texts)
    bypassed_async = asyncio.run(asyncio.wait_for(embed_async(), timeout=60))
    assert _cache_counters(srv) == (7, 7, 7)  # every text was cached, and none was read
    for got in (into_empty, hit, bypassed, bypassed_async):
        assert got.tobytes() == missed.tobytes()
