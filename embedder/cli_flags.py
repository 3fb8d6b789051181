"""The CLI's config flags: which `ServerConfig` fields each subcommand takes, one sentence of help for
each field, and where the default bundle is found.

`serve` takes every field but the secrets; the other subcommands take only the fields that change what
they do, so their `--help` lists their own flags. A flag's value wins over the env var
`STREAMREC_EMBEDDER_<FIELD>`, which wins over the default (embedder/config.py).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from embedder.config import ENV_PREFIX, SECRET_FIELDS, ServerConfig

CONFIG_HELP: dict[str, str] = {
    "bundle": "Model bundle directory (docs/bundle.md), repeatable to serve several models or versions; "
    "the default one is found from any directory.",
    "model_repository": "A folder of NAME/VERSION/ bundles served instead of --bundle, re-read on SIGHUP "
    "(docs/bundle.md).",
    "default_model": "The model a request without `model` gets ('' = the first bundle or repository name).",
    "host": "Address the gRPC server binds ([::] = every interface).",
    "port": "gRPC port (0 = any free port; the log says which).",
    "metrics_port": "Prometheus /metrics HTTP port (0 = any free port, -1 = no metrics server).",
    "metrics_host": "Address the /metrics server binds (the page has no auth: loopback unless scraped).",
    "http_port": "Port of the OpenAI-compatible HTTP front (-1 = off, 0 = any free port; docs/http.md).",
    "http_host": "Address the HTTP front binds ([::] = every interface).",
    "processes": "Server processes sharing the port, each with its own event loop, cores / N workers and "
    "cache / N (docs/operations.md, 'Several processes').",
    "workers": "Inference workers, each with its own ONNX session (0 = one per CPU core).",
    "intra_op_threads": "Threads inside each ONNX session (1 is fastest for small CNNs).",
    "tokenizer_threads": "Threads that tokenize requests off the event loop (0 = as many as workers).",
    "inline_tokenize_max_chars": "Interactive requests of at most this many characters are tokenized "
    "on the event loop (0 = never).",
    "inline_infer_max_tokens": "A lone batch of at most this many padded tokens runs on the event loop "
    "(0 = never).",
    "max_batch_items": "Most texts in one model call.",
    "max_batch_tokens": "Most padded tokens (longest text x texts) in one model call.",
    "max_wait_ms": "Longest a text waits for its batch to fill before the batch runs anyway.",
    "min_padding_efficiency": "A text joins a batch only if the batch stays this share real tokens "
    "(0 = off).",
    "max_queued_items": "Texts waiting for inference beyond which a request is refused (RESOURCE_EXHAUSTED).",
    "max_texts_per_request": "Most texts in one request (more: INVALID_ARGUMENT).",
    "max_text_chars": "Longest text in characters (longer: INVALID_ARGUMENT).",
    "max_stream_inflight": "Messages of one EmbedStream in work before the server stops reading it.",
    "grace_period_s": "On SIGTERM/SIGINT, how long accepted calls may take to finish.",
    "max_receive_message_bytes": "Largest request message in bytes (larger: RESOURCE_EXHAUSTED).",
    "max_concurrent_rpcs": "Open calls of every method but health beyond which a new one gets "
    "RESOURCE_EXHAUSTED (0 = no cap).",
    "max_health_watch_streams": "Open health Watch streams (no API key needed) beyond which a new one gets "
    "RESOURCE_EXHAUSTED; kept apart from the keyed calls' capacity (0 = no cap).",
    "max_tokenizing_chars": "Characters admitted but not yet tokenized beyond which a request is refused "
    "(RESOURCE_EXHAUSTED; 0 = no bound).",
    "bulk_min_chars": "A request tokenizing at least this many characters is bulk: tokenized and run on "
    "lower-priority threads, so interactive calls keep their latency (0 = no lanes).",
    "inference_timeout_s": "A batch running longer fails its callers and its worker is replaced.",
    "log_level": "DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).",
    "embedding_cache_mb": "MiB of embeddings cached per server, LRU-evicted (default 64; 0 = no cache).",
    "malloc_arenas": "glibc malloc arenas (M_ARENA_MAX) for the server: fewer keep its memory from "
    "growing after bursts of long texts (default 2; 0 = glibc's default).",
    "malloc_trim_free_mb": "Return the server's free heap pages to the OS (malloc_trim) when its free "
    "heap grew by more than this many MiB since the last trim, checked once a second (0 = never).",
    "batch_log": "Diagnostics: write every batch the server forms (token ids) to this JSONL file.",
    "tls_cert_file": "Server certificate (PEM); with --tls-key-file it turns TLS on (docs/tls.md).",
    "tls_key_file": "Server private key (PEM), with --tls-cert-file.",
    "tls_client_ca_file": "CA (PEM) that must have signed client certificates: mutual TLS.",
    "api_keys_file": "File of API keys, one per line; calls then need 'authorization: Bearer <key>'.",
    "api_keys": "Comma-separated API keys (env var only).",
}

_LIMITS = (
    "max_texts_per_request",
    "max_text_chars",
    "max_batch_items",
    "max_batch_tokens",
    "max_wait_ms",
    "max_queued_items",
    "max_receive_message_bytes",
    "workers",
)

# The fields each subcommand other than `serve` reads.
_MODELS = ("bundle", "model_repository", "default_model")  # where --model picks from
COMMAND_FIELDS: dict[str, tuple[str, ...]] = {
    "embed": (*_MODELS, "max_text_chars", "intra_op_threads"),
    "info": (*_MODELS, *_LIMITS),  # the limits a server with these settings would report
    "embed-file": (*_MODELS, "workers", "intra_op_threads", "max_texts_per_request", "max_text_chars"),
    "explain": (*_MODELS, "max_text_chars", "inference_timeout_s"),
}


def command_fields(command: str) -> tuple[str, ...]:
    """The config fields `command` takes as flags (`serve`: all but the secrets)."""
    if command == "serve":
        return tuple(f.name for f in dataclasses.fields(ServerConfig) if f.name not in SECRET_FIELDS)
    return COMMAND_FIELDS[command]


def add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """`--max-batch-items` etc. for `command`'s fields, each with its sentence, default and env var.

    The argparse default is None so that an unset flag leaves the env var and the default to
    `load_config`; the help shows the effective default instead.
    """
    defaults = ServerConfig()
    group = parser.add_argument_group("settings (flag > env var > default)")
    for name in command_fields(command):
        default = getattr(defaults, name)
        if name == "bundle":  # repeatable: one model (version) per flag; the env var is comma-separated
            help_ = f"{CONFIG_HELP[name]} (default {default!r}; env {ENV_PREFIX}BUNDLE, comma-separated)"
            group.add_argument(
                "--bundle", dest=name, action="append", default=None, metavar="DIR", help=help_
            )
            continue
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=type(default),
            default=None,
            metavar=type(default).__name__.upper(),
            help=f"{CONFIG_HELP[name]} (default {default!r}; env {ENV_PREFIX}{name.upper()})",
        )


def resolve_bundle(path: str) -> str:
    """`path` itself if it exists from here; the default bundle also from the source checkout, so
    `streamrec-embedder embed "x"` works from any directory (an installed image has it under its
    working directory, where the first check finds it)."""
    if path != ServerConfig().bundle or Path(path).exists():
        return path
    checkout = Path(__file__).resolve().parents[1] / path
    return str(checkout) if checkout.exists() else path
