"""Server configuration: one dataclass, read once at start with precedence flag > env > default.

Every knob carries its unit in its name (`max_wait_ms`, `grace_period_s`). Env vars are
`STREAMREC_EMBEDDER_<FIELD>` (upper case). Nothing here runs at import time: `load_config()` reads the
environment only when called.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from embedder.errors import ConfigError

ENV_PREFIX = "STREAMREC_EMBEDDER_"
# Fields that are never command-line flags (anyone on the host can read a command line with `ps`).
SECRET_FIELDS = frozenset({"api_keys"})

# The committed default model bundle, relative to the repository root (the one place that names it).
DEFAULT_BUNDLE = "models/streamrec-cnn-v2"


@dataclass(frozen=True)
class ServerConfig:
    """Every serving knob. `workers=0` means one inference worker per CPU core."""

    # Bundle directories to serve, comma-separated (the `--bundle` flag may be repeated instead).
    bundle: str = DEFAULT_BUNDLE
    # A model repository (NAME/VERSION/ bundles, docs/bundle.md): served instead of `bundle`, re-read on
    # SIGHUP and by the ReloadModels RPC.
    model_repository: str = ""
    # What a request without `model` gets ("" = the first --bundle, or the repository's first name).
    default_model: str = ""
    host: str = "[::]"
    port: int = 50051
    # Prometheus /metrics HTTP port (0 = any free port, -1 = no metrics server). The page is plaintext and
    # unauthenticated, so by default only this host can read it; a container or pod that is scraped from
    # outside sets metrics_host=0.0.0.0 and restricts who reaches the port (docs/operations.md).
    metrics_port: int = 9000
    metrics_host: str = "127.0.0.1"
    # The OpenAI-compatible HTTP front (docs/http.md): -1 = off (the default), 0 = any free port.
    http_port: int = -1
    http_host: str = "[::]"
    # Server processes on the one port (SO_REUSEPORT; grpc/processes.py): each has its own event loop,
    # `workers` (0 = cores / processes), its share of `embedding_cache_mb` and its own limits. The kernel
    # spreads connections, not calls: a client needs several connections to use them all.
    processes: int = 1
    # Inference workers, each with its own ONNX session (0 = one per core).
    workers: int = 0
    intra_op_threads: int = 1
    # Threads that tokenize requests off the event loop (0 = same as workers).
    tokenizer_threads: int = 0
    # Requests of at most this many characters in all are tokenized on the event loop itself (~1 ms of
    # loop time for 32 item texts). Plain-ASCII texts take the fast path, Python that holds the GIL on a
    # tokenizer thread too, so the hop there and back (~0.25 ms, ~8 context switches) bought no
    # parallelism: at 8192 rather than 256, 64 callers of 32 item texts got +9% items/s (5 interleaved
    # pairs, -6% to +26%) and -4% server CPU per item (docs/benchmarks.md). 0 = never.
    inline_tokenize_max_chars: int = 8192
    # A lone batch (nothing else running or queued) of at most this many padded tokens runs on the
    # event loop too: the worker hop costs ~0.4 ms, the CNN on 128 padded tokens ~0.1 ms. Turned off at
    # start if the model takes > 1 ms for that (core/inline.py). 0 = never.
    inline_infer_max_tokens: int = 128
    # Small CNNs gain nothing from batches past ~64 texts here; 256 falls out of cache (docs/performance.md).
    max_batch_items: int = 64
    # Padded tokens per batch (longest text in the batch x number of texts): the true cost of a batch.
    max_batch_tokens: int = 8192
    max_wait_ms: float = 2.0
    # A text joins a batch only while the batch stays at least this share real tokens (real / padded);
    # the rest waits for the next batch. Off (0), a 32-text request of item texts ran as one batch ~0.63
    # real; at 0.8 the batches were ~0.83 real and the server's CPU per item 6-8% lower
    # (`streamrec-bench overhead`, docs/benchmarks.md).
    min_padding_efficiency: float = 0.8
    max_queued_items: int = 8192
    max_texts_per_request: int = 512
    # Characters admitted but not yet tokenized (core/admission.py): beyond it a request is refused at
    # once (a request alone is always admitted). ~0.35 s of one tokenizer thread here. 0 = no bound.
    max_tokenizing_chars: int = 1_048_576
    # Priority lanes (core/lanes.py): a request whose tokenizing cost (characters, as admission counts
    # them) is at least this is bulk, tokenized and run on threads at a lower OS priority with inference
    # slots of its own, so a flood of long texts cannot take the CPU from interactive calls. 32 item
    # texts (20-40 words) cost ~6.3k characters, 64 ~12.7k: interactive; 512 texts of 20,000 characters
    # ~524k: bulk. 0 = no lanes (one lane, `workers` sessions).
    bulk_min_chars: int = 16_384
    max_text_chars: int = 20000
    # In-flight messages per EmbedStream before the server stops reading from that stream.
    max_stream_inflight: int = 64
    grace_period_s: float = 10.0
    max_receive_message_bytes: int = 16 * 1024 * 1024
    # Open calls (a stream counts once) beyond which a new one gets RESOURCE_EXHAUSTED: every method but
    # the health service's (grpc/limits.py); 0 = no cap.
    max_concurrent_rpcs: int = 1024
    # Open health Watch streams (no API key needed, and they stay open) beyond which a new one gets
    # RESOURCE_EXHAUSTED; their own bound, so they can never take the capacity of keyed calls. gRPC's
    # client-side health checking opens one per channel: raise it for large fleets. 0 = no cap.
    max_health_watch_streams: int = 64
    # Watchdog: a batch running longer than this fails its callers (INTERNAL) and its worker is replaced.
    inference_timeout_s: float = 30.0
    log_level: str = "INFO"
    # Embedding cache (core/cache.py): megabytes of raw model outputs kept per server, LRU-evicted, keyed
    # by (bundle sha256, truncation, text). 0 = off. On by default: 3.3x items/s on a Zipf stream, no
    # cost without repeats (docs/operations.md, "Embedding cache").
    embedding_cache_mb: float = 64.0
    # glibc malloc arenas (M_ARENA_MAX), set at `serve` start with a fixed mmap threshold; 0 = glibc's
    # defaults (8 arenas per core). Each thread that allocates under contention gets an arena of its own
    # and keeps what it freed there: a long-text flood left the server 37% larger after it stopped, 20%
    # with 2 arenas (issue 14; embedder/malloc.py).
    malloc_arenas: int = 2
    # Return the heap's free pages to the OS (malloc_trim, checked once a second) when its free bytes
    # grew by more than this many MiB since their lowest point since the last trim: after a burst.
    # 0 = never (embedder/malloc.py).
    malloc_trim_free_mb: float = 32.0
    # Diagnostics: write every batch the scheduler forms (its texts' token ids) to this JSONL file, for
    # `streamrec-bench overhead` to replay on the model alone. "" = off. It holds the texts: not for
    # production traffic.
    batch_log: str = ""
    # TLS: PEM files; cert + key turn TLS on, a client CA additionally requires client certs (mTLS).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # API keys (`authorization: Bearer <key>`): a file with one key per line, and/or a comma-separated
    # list from the env var. Never a flag (SECRET_FIELDS): a command line shows in `ps`. None = no key.
    api_keys_file: str = ""
    api_keys: str = field(default="", repr=False)

    def bundle_paths(self) -> list[str]:
        return [p.strip() for p in self.bundle.split(",") if p.strip()]

    def resolved_workers(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)

    def resolved_tokenizer_threads(self) -> int:
        return self.tokenizer_threads if self.tokenizer_threads > 0 else self.resolved_workers()

    def validate(self) -> ServerConfig:
        """Raise `ConfigError` naming the field if a value cannot work; return self for chaining."""
        positive = (
            "max_batch_items",
            "max_batch_tokens",
            "max_queued_items",
            "max_texts_per_request",
            "max_text_chars",
            "intra_op_threads",
            "processes",
            "max_stream_inflight",
            "max_receive_message_bytes",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)})")
        non_negative = (
            "workers",
            "tokenizer_threads",
            "inline_tokenize_max_chars",
            "inline_infer_max_tokens",
            "max_wait_ms",
            "grace_period_s",
            "max_concurrent_rpcs",
            "embedding_cache_mb",
            "max_health_watch_streams",
            "max_tokenizing_chars",
            "bulk_min_chars",
            "malloc_arenas",
            "malloc_trim_free_mb",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if not 0 <= self.port <= 65535 or not all(
            -1 <= p <= 65535 for p in (self.metrics_port, self.http_port)
        ):
            raise ConfigError(
                f"port, metrics_port and http_port must be valid ports "
                f"(got {self.port}, {self.metrics_port}, {self.http_port})"
            )
        if not 0.0 <= self.min_padding_efficiency < 1.0:
            raise ConfigError(f"min_padding_efficiency must be in [0, 1) (got {self.min_padding_efficiency})")
        if self.inference_timeout_s <= 0:
            raise ConfigError(f"inference_timeout_s must be > 0 (got {self.inference_timeout_s})")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)} (got {self.log_level!r})")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file and tls_key_file must be given together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        if self.max_texts_per_request > self.max_queued_items:
            raise ConfigError(
                f"max_texts_per_request ({self.max_texts_per_request}) must be <= max_queued_items "
                f"({self.max_queued_items}), or a full request could never be queued"
            )
        return self


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")  # any case


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ServerConfig)]


def _coerce(name: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}: cannot read {raw!r} as {kind.__name__}") from None


def _field_types() -> dict[str, type]:
    defaults = ServerConfig()
    return {name: type(getattr(defaults, name)) for name in field_names()}


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Build the config: explicit `flags` (None values ignored) > env `STREAMREC_EMBEDDER_*` > defaults.

    `env` defaults to `os.environ`, read here and only here.
    """
    environ = os.environ if env is None else env
    types = _field_types()
    values: dict[str, Any] = {}
    for name, kind in types.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(ENV_PREFIX + name.upper(), raw, kind)
    for name, value in (flags or {}).items():
        if name not in types:
            raise ConfigError(f"unknown config field {name!r}")
        if value is not None:
            values[name] = (
                _coerce(name, str(value), types[name]) if not isinstance(value, types[name]) else value
            )
    return ServerConfig(**values).validate()
