"""Prometheus metrics: the base set in docs/api.md ("Metrics") plus the hardening ones in docs/operations.md,
on their own registry and HTTP port.

Each server owns a `Metrics` with its own `CollectorRegistry`, so several servers can live in one
process (tests) without clashing on the global registry.

Every series but `model_info` carries a `model` label, "name@version" of a loaded model (or "none" for a
call refused before a model was chosen): its values come from the server's model list, never from what
a caller sent, so the label stays bounded. A removed version's batch series are dropped with it.
"""

from __future__ import annotations

import contextlib
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
MODEL = "model"
NO_MODEL = "none"  # the `model` label of a call refused before a model was chosen
# The Embedder methods that run on a model (their OK series exist from the moment a version loads).
SERVED_METHODS = ("Embed", "EmbedStream", "Explain", "GetModelInfo")

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
        # Batches run per priority lane (interactive, bulk: embedder/core/lanes.py).
        "batches_total",
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
        "unreceived_requests_total",
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
    """All serving metrics; `for_model` gives the scheduler's `BatchObserver` (embedder/core/scheduler.py)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # `_created` series are not in the contract; the switch is process-wide: flip it here, not on import.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        p = PREFIX
        m = [MODEL]
        self.requests = Counter(
            p + "requests", "RPCs (stream messages count one each)", ["method", "code", MODEL], registry=r
        )
        self.items = Counter(p + "items", "Texts embedded", m, registry=r)
        self.tokens = Counter(
            p + "tokens", "Tokens embedded (after truncation, incl. special tokens)", m, registry=r
        )
        self.request_latency = Histogram(
            p + "request_latency_seconds",
            "Server-side latency",
            ["method", MODEL],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds",
            "Time a request waited in the batch queue",
            m,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            p + "inference_seconds", "ONNX time per batch", m, buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_items = Histogram(
            p + "batch_items", "Texts per batch", m, buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            p + "batch_tokens", "Padded tokens per batch", m, buckets=_TOKEN_BUCKETS, registry=r
        )
        self.padding_ratio = Histogram(
            p + "padding_ratio",
            "Share of a batch's tokens that are padding",
            m,
            buckets=_RATIO_BUCKETS,
            registry=r,
        )
        self.batch_real_tokens = Counter(
            p + "batch_real_tokens",
            "Tokens of the texts run (padding excluded), over all batches",
            m,
            registry=r,
        )
        self.batch_padded_tokens = Counter(
            p + "batch_padded_tokens",
            "Tokens run including padding (longest x texts per batch); real / padded = padding efficiency",
            m,
            registry=r,
        )
        self.batches = Counter(
            p + "batches",
            "Batches run, by priority lane (interactive, bulk: bulk_min_chars)",
            ["lane", MODEL],
            registry=r,
        )
        self.queue_items = Gauge(p + "queue_items", "Texts waiting in the batch queue", m, registry=r)
        self.model_info = Gauge(
            p + "model_info", "Served model (value 1)", ["name", "version", "dim"], registry=r
        )
        self.dropped_items = Counter(
            p + "dropped_items",
            "Texts dropped before inference (reason: deadline, cancelled, failed, shutdown)",
            ["reason", MODEL],
            registry=r,
        )
        self.failed_batches = Counter(
            p + "failed_batches",
            "Batches whose inference failed (reason: error, timeout)",
            ["reason", MODEL],
            registry=r,
        )
        self._cache = _CacheCollector()
        r.register(self._cache)
        self.unreceived_requests = Counter(
            p + "unreceived_requests",
            "Unary calls whose request never reached a handler: over max_receive_message_bytes (the caller "
            "got RESOURCE_EXHAUSTED from gRPC), or the caller cancelled or ran out of time while sending",
            ["method"],
            registry=r,
        )
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
        """A model version is loaded (model_info 1). Its counters start at 0 now, not at its first call:
        Prometheus' rate() needs a sample from before the traffic, or the first burst never shows."""
        self.model_info.labels(name=name, version=version, dim=str(dim)).set(1)
        model = f"{name}@{version}"
        self.items.labels(model=model)
        self.tokens.labels(model=model)
        self.queue_items.labels(model=model).set(0)
        for method in SERVED_METHODS:
            self.requests.labels(method=method, code="OK", model=model)

    def forget_model(self, name: str, version: str, dim: int) -> None:
        """A version is unloaded: its model_info, queue and batch series go (the label stays bounded)."""
        key = f"{name}@{version}"
        for metric in (
            self.queue_items,
            self.batch_items,
            self.batch_tokens,
            self.padding_ratio,
            self.inference,
        ):
            _remove(metric, key)
        _remove(self.model_info, name, version, str(dim))

    def for_model(self, model: str) -> ModelObserver:
        """The scheduler's observer for one loaded model ("name@version")."""
        return ModelObserver(self, model)

    def observe_request(
        self,
        method: str,
        code: str,
        latency_s: float,
        items: int = 0,
        tokens: int = 0,
        *,
        model: str = NO_MODEL,
    ) -> None:
        self.requests.labels(method=method, code=code, model=model).inc()
        self.request_latency.labels(method=method, model=model).observe(latency_s)
        if items:
            self.items.labels(model=model).inc(items)
        if tokens:
            self.tokens.labels(model=model).inc(tokens)

    def request_counts(self) -> dict[tuple[str, str], int]:
        """requests_total as {(method, code): count} over every model (the drain summary logs it at exit)."""
        counts: dict[tuple[str, str], int] = {}
        for family in self.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    key = (sample.labels["method"], sample.labels["code"])
                    counts[key] = counts.get(key, 0) + int(sample.value)
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


class ModelObserver:
    """The scheduler's `BatchObserver` for one model: the server's metrics under its `model` label."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._m = metrics
        self.model = model

    def observe_batch(
        self, items: int, padded_tokens: int, real_tokens: int, inference_s: float, lane: str
    ) -> None:
        m, model = self._m, self.model
        m.batches.labels(lane=lane, model=model).inc()
        m.batch_items.labels(model=model).observe(items)
        m.batch_tokens.labels(model=model).observe(padded_tokens)
        m.padding_ratio.labels(model=model).observe(
            1.0 - real_tokens / padded_tokens if padded_tokens else 0.0
        )
        m.batch_real_tokens.labels(model=model).inc(real_tokens)
        m.batch_padded_tokens.labels(model=model).inc(padded_tokens)
        m.inference.labels(model=model).observe(inference_s)

    def set_queued_items(self, items: int) -> None:
        self._m.queue_items.labels(model=self.model).set(items)

    def observe_dropped(self, items: int, reason: str) -> None:
        self._m.dropped_items.labels(reason=reason, model=self.model).inc(items)

    def observe_failed_batch(self, items: int, reason: str) -> None:
        self._m.failed_batches.labels(reason=reason, model=self.model).inc()


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # a series never observed
        metric.remove(*labels)


def registered_names(registry: Collector) -> set[str]:
    """Metric family names a registry exports (used by tests and the dashboard check)."""
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names
