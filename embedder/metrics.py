"""Prometheus metrics: the base set in docs/api.md ("Metrics") plus the hardening ones in docs/operations.md,
on their own registry and HTTP port.

Each server owns a `Metrics` with its own `CollectorRegistry`, so several servers can live in one
process (tests) without clashing on the global registry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "streamrec_embedder_"

# Every metric name the server exports (after prometheus_client adds `_total` to counters).
METRIC_NAMES = tuple(
    PREFIX + name
    for name in (
        "requests_total",
        "items_total",
        "tokens_total",
        "request_latency_seconds",
        "queue_wait_seconds",
        "inference_seconds",
        "batch_items",
        "batch_tokens",
        "padding_ratio",
        # Token-weighted padding efficiency = rate(batch_real_tokens) / rate(batch_padded_tokens).
        "batch_real_tokens_total",
        "batch_padded_tokens_total",
        "queue_items",
        "model_info",
        # Beyond the base set (docs/operations.md): work dropped before inference, failed batches.
        "dropped_items_total",
        "failed_batches_total",
        # The embedding cache (docs/operations.md); zeros while it is off.
        "cache_hits_total",
        "cache_misses_total",
        "cache_evictions_total",
        "cache_bytes",
        "cache_entries",
        "cache_capacity_bytes",
        "open_calls",
    )
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class CacheCounts(Protocol):
    """What the cache metrics read (embedder.core.cache.CacheStats has these fields)."""

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def evictions(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def entries(self) -> int: ...
    @property
    def capacity_bytes(self) -> int: ...


class _CacheCollector(Collector):
    """Reads the cache's own counters at scrape time, so a cache hit costs no metric update."""

    def __init__(self) -> None:
        self.read: Callable[[], CacheCounts | None] = lambda: None

    def collect(self) -> Iterator[Metric]:
        stats = self.read()
        p = PREFIX + "cache_"
        counters = (
            ("hits", "Texts answered from the embedding cache"),
            ("misses", "Texts looked up in the embedding cache and not found (embedded by the model)"),
            ("evictions", "Entries evicted from the embedding cache to stay within its capacity"),
        )
        for name, doc in counters:
            yield CounterMetricFamily(p + name, doc, value=getattr(stats, name) if stats else 0)
        gauges = (
            ("bytes", "Memory the embedding cache's entries are charged (vectors, texts, overhead)"),
            ("entries", "Texts in the embedding cache"),
            ("capacity_bytes", "The embedding cache's bound (embedding_cache_mb); 0 = off"),
        )
        for name, doc in gauges:
            yield GaugeMetricFamily(p + name, doc, value=getattr(stats, name) if stats else 0)


class Metrics:
    """All serving metrics; implements the scheduler's `BatchObserver` (embedder/core/scheduler.py)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # `_created` series are not in the contract; the switch is process-wide: flip it here, not on import.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        p = PREFIX
        self.requests = Counter(
            p + "requests", "RPCs (stream messages count one each)", ["method", "code"], registry=r
        )
        self.items = Counter(p + "items", "Texts embedded", registry=r)
        self.tokens = Counter(
            p + "tokens", "Tokens embedded (after truncation, incl. special tokens)", registry=r
        )
        self.request_latency = Histogram(
            p + "request_latency_seconds",
            "Server-side latency",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds",
            "Time a request waited in the batch queue",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            p + "inference_seconds", "ONNX time per batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_items = Histogram(p + "batch_items", "Texts per batch", buckets=_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            p + "batch_tokens", "Padded tokens per batch", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.padding_ratio = Histogram(
            p + "padding_ratio",
            "Share of a batch's tokens that are padding",
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.batch_real_tokens = Counter(
            p + "batch_real_tokens",
            "Tokens of the texts run (padding excluded), over all batches",
            registry=r,
        )
        self.batch_padded_tokens = Counter(
            p + "batch_padded_tokens",
            "Tokens run including padding (longest x texts per batch); real / padded = padding efficiency",
            registry=r,
        )
        self.queue_items = Gauge(p + "queue_items", "Texts waiting in the batch queue", registry=r)
        self.model_info = Gauge(
            p + "model_info", "Served model (value 1)", ["name", "version", "dim"], registry=r
        )
        self.dropped_items = Counter(
            p + "dropped_items",
            "Texts dropped before inference (reason: deadline, cancelled, failed, shutdown)",
            ["reason"],
            registry=r,
        )
        self.failed_batches = Counter(
            p + "failed_batches",
            "Batches whose inference failed (reason: error, timeout)",
            ["reason"],
            registry=r,
        )
        self._cache = _CacheCollector()
        r.register(self._cache)
        self.open_calls = Gauge(
            p + "open_calls",
            "Calls open now, by lane: calls (everything but health), watch (health Watch streams)",
            ["lane"],
            registry=r,
        )
        self._http: WSGIServer | None = None
        self._http_thread: threading.Thread | None = None

    def watch_cache(self, read: Callable[[], CacheCounts | None]) -> None:
        """Export the embedding cache's counters: `read()` returns them at scrape time (None = off)."""
        self._cache.read = read

    def set_model(self, name: str, version: str, dim: int) -> None:
        self.model_info.labels(name=name, version=version, dim=str(dim)).set(1)

    def observe_request(
        self, method: str, code: str, latency_s: float, items: int = 0, tokens: int = 0
    ) -> None:
        self.requests.labels(method=method, code=code).inc()
        self.request_latency.labels(method=method).observe(latency_s)
        if items:
            self.items.inc(items)
        if tokens:
            self.tokens.inc(tokens)

    def observe_batch(self, items: int, padded_tokens: int, real_tokens: int, inference_s: float) -> None:
        self.batch_items.observe(items)
        self.batch_tokens.observe(padded_tokens)
        self.padding_ratio.observe(1.0 - real_tokens / padded_tokens if padded_tokens else 0.0)
        self.batch_real_tokens.inc(real_tokens)
        self.batch_padded_tokens.inc(padded_tokens)
        self.inference.observe(inference_s)

    def set_queued_items(self, items: int) -> None:
        self.queue_items.set(items)

    def observe_dropped(self, items: int, reason: str) -> None:
        self.dropped_items.labels(reason=reason).inc(items)

    def observe_failed_batch(self, items: int, reason: str) -> None:
        self.failed_batches.labels(reason=reason).inc()

    def request_counts(self) -> dict[tuple[str, str], int]:
        """requests_total as {(method, code): count} (the drain summary logs it at exit)."""
        counts: dict[tuple[str, str], int] = {}
        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    counts[(sample.labels["method"], sample.labels["code"])] = int(sample.value)
        return counts

    def start_http(self, host: str, port: int) -> int:
        """Serve /metrics on (host, port); port 0 picks a free one. Returns the bound port."""
        self._http, self._http_thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def registered_names(registry: Collector) -> set[str]:
    """Metric family names a registry exports (used by tests and the dashboard check)."""
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names
