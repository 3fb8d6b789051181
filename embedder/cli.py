"""`streamrec-embedder`: serve a bundle, embed texts in-process, or print a bundle's facts.

    streamrec-embedder serve [--bundle DIR]... | [--model-repository DIR] [--port 50051] [--metrics-port 9000]
    streamrec-embedder embed "some text" "another"      # or texts on stdin, one per line; JSON lines out
    streamrec-embedder info [--bundle DIR]              # manifest + server limits as JSON
    streamrec-embedder info --address HOST:PORT         # the same, asked from a running server
    streamrec-embedder embed-file catalogue.jsonl --out embeddings.npy   # bulk, progress + resume
    streamrec-embedder health [--address 127.0.0.1:50051]  # exit 0 iff grpc.health.v1 says SERVING
    streamrec-embedder explain "query" "item" [--html out.html]  # coloured token attribution
    streamrec-embedder models [--address 127.0.0.1:50051]  # the models and versions a server has loaded

The in-process commands (embed, info, embed-file, explain) take `--model name[@version]` to pick one of
the configured bundles; `embed-file --address ... --model` asks the servers for that model.

Every config field is a `serve` flag (`--max-batch-items`), an env var
(`STREAMREC_EMBEDDER_MAX_BATCH_ITEMS`) and a default, in that order of precedence; the other subcommands
take the fields they use (embedder/cli_flags.py). A bad bundle prints a one-line reason and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder.bulk import cli as bulk_cli
from embedder.channel import ChannelSecurity
from embedder.cli_flags import add_config_flags, resolve_bundle
from embedder.client import ClientOptions, EmbedderClient
from embedder.config import ServerConfig, load_config
from embedder.core.bundle import load_bundle
from embedder.core.engine import EmbeddingEngine, EmbedOptions
from embedder.core.repository import choose_bundle, configured_models
from embedder.errors import EmbedderError
from embedder.explain import render as explain_render
from embedder.grpc.processes import run_processes, serve_process
from embedder.options import add_vector_flags, vector_flags
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc

PROG = "streamrec-embedder"


def _add_channel_flags(parser: argparse.ArgumentParser, default_address: str | None) -> None:
    """How `health` and `info --address` reach a server: address, deadline, TLS; defaults in the help."""
    where = (
        f"host:port of the server (default: {default_address})"
        if default_address
        else "host:port of a running server to ask (default: none, read --bundle here)"
    )
    parser.add_argument("--address", default=default_address, help=where)
    parser.add_argument(
        "--timeout-s", type=float, default=3.0, help="Give up after this many seconds (default: 3.0)."
    )
    parser.add_argument(
        "--tls-ca-file", default="", help="PEM roots: talk TLS to a TLS server (default: none, plaintext)."
    )
    parser.add_argument(
        "--tls-server-name", default="", help="Name the server's certificate carries (default: the host)."
    )
    parser.add_argument(
        "--tls-cert-file", default="", help="Client certificate, for servers that want mTLS (default: none)."
    )
    parser.add_argument(
        "--tls-key-file", default="", help="Client key, for servers that want mTLS (default: none)."
    )


class _ExactParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="StreamRec text-embedding service")
    # No abbreviated flags: `--api-keys KEY` would otherwise be taken as `--api-keys-file KEY` (and the
    # key echoed in the "cannot read" error); a secret is never a flag (config.SECRET_FIELDS).
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ExactParser)
    serve = sub.add_parser("serve", help="serve a bundle over gRPC (+ /metrics) until SIGTERM/SIGINT")
    add_config_flags(serve, "serve")
    embed = sub.add_parser("embed", help="embed texts in-process (args, or stdin lines); JSON lines out")
    embed.add_argument("texts", nargs="*", help="texts to embed (default: read stdin, one per line)")
    add_vector_flags(embed)
    _add_model_flag(embed)
    add_config_flags(embed, "embed")
    info = sub.add_parser(
        "info", help="the bundle's manifest and the server limits as JSON (--address: a running server's)"
    )
    _add_channel_flags(info, None)
    _add_model_flag(info)
    add_config_flags(info, "info")
    embed_file = sub.add_parser(
        "embed-file", help="embed a JSONL catalogue into .npy/.parquet (progress bar, resumable shards)"
    )
    bulk_cli.add_arguments(embed_file)
    add_config_flags(embed_file, "embed-file")
    explain = sub.add_parser("explain", help="why two texts are similar: coloured words, --html heatmap")
    explain_render.add_arguments(explain)
    _add_model_flag(explain)
    add_config_flags(explain, "explain")
    probe = sub.add_parser("health", help="ask a server's grpc.health.v1 status; exit 0 iff SERVING")
    _add_channel_flags(probe, f"127.0.0.1:{ServerConfig.port}")
    probe.add_argument("--service", default="", help="Service to ask about (default: '', the whole server).")
    models = sub.add_parser("models", help="list the models and versions a running server has loaded")
    _add_channel_flags(models, f"127.0.0.1:{ServerConfig.port}")
    models.add_argument(
        "--api-key-env",
        default="",
        help="Env var holding the API key, for servers with keys (default: none).",
    )
    return parser


def _add_model_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="",
        help="name or name@version among the configured bundles (--address: the server's) "
        "(default: the first bundle's name, at its highest version).",
    )


def _config(args: argparse.Namespace) -> ServerConfig:
    names = {f.name for f in dataclasses.fields(ServerConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    if flags.get("bundle") is not None:  # --bundle may be repeated
        flags["bundle"] = ",".join(flags["bundle"])
    config = load_config(flags)
    return dataclasses.replace(config, bundle=",".join(resolve_bundle(p) for p in config.bundle_paths()))


def _pinned(config: ServerConfig, spec: str) -> ServerConfig:
    """`config` with exactly the one bundle `spec` picks (an in-process command runs one model)."""
    chosen = choose_bundle(config, spec)
    return dataclasses.replace(config, bundle=str(chosen.path), model_repository="")


def _cmd_serve(config: ServerConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if config.processes > 1:
        return run_processes(config)
    serve_process(config)
    return 0


def _cmd_embed(config: ServerConfig, args: argparse.Namespace) -> int:
    texts: list[str] = list(args.texts) or [line.rstrip("\n") for line in sys.stdin]
    engine = EmbeddingEngine(load_bundle(config.bundle), dataclasses.replace(config, workers=1))
    options = EmbedOptions(**vector_flags(args))
    try:
        step = config.max_texts_per_request
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            for text, row in zip(chunk, engine.embed_in_process(chunk, options), strict=True):
                print(json.dumps({"text": text, "embedding": [round(float(v), 7) for v in row]}))
    finally:
        engine.close_sync()
    return 0


def _cmd_info(config: ServerConfig, models: list[str]) -> int:
    bundle = load_bundle(config.bundle)
    limits = {
        k: getattr(config, k)
        for k in (
            "max_texts_per_request",
            "max_text_chars",
            "max_batch_items",
            "max_batch_tokens",
            "max_wait_ms",
            "max_queued_items",
            "max_receive_message_bytes",
        )
    }
    limits["workers"] = config.resolved_workers()
    out: dict[str, Any] = {"bundle": str(bundle.path), "manifest": dataclasses.asdict(bundle.manifest)}
    out["limits"] = limits
    out["models"] = models  # every configured model/version; the manifest is the --model one
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def _cmd_info_remote(args: argparse.Namespace) -> int:
    """GetModelInfo from a running server, as JSON with the proto's field names."""
    with _channel(args) as channel:
        stub = pb_grpc.EmbedderStub(channel)  # type: ignore[no-untyped-call]
        try:
            reply = stub.GetModelInfo(pb.GetModelInfoRequest(model=args.model), timeout=args.timeout_s)
        except grpc.RpcError as exc:
            print(f"{PROG}: error: {args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    info = MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    print(json.dumps({"address": args.address, **info}, indent=2, sort_keys=True))
    return 0


def _security(args: argparse.Namespace, api_key: str = "") -> ChannelSecurity:
    return ChannelSecurity.from_files(
        args.tls_ca_file, args.tls_cert_file, args.tls_key_file, args.tls_server_name, api_key
    )


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if not args.tls_ca_file:
        return grpc.insecure_channel(args.address)
    key, cert = (Path(p).read_bytes() if p else None for p in (args.tls_key_file, args.tls_cert_file))
    credentials = grpc.ssl_channel_credentials(Path(args.tls_ca_file).read_bytes(), key, cert)
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.address, credentials, options=options)


def _cmd_models(args: argparse.Namespace) -> int:
    """One JSON line per loaded model version: name, version, sha256, dim, and which are defaults."""
    api_key = os.environ.get(args.api_key_env, "") if args.api_key_env else ""
    options = ClientOptions(timeout_s=args.timeout_s, max_attempts=1)
    with EmbedderClient(args.address, options, security=_security(args, api_key)) as client:
        try:
            info = client.model_info()
        except grpc.RpcError as exc:
            print(f"{PROG}: error: {args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    for m in info.models:
        fields: dict[str, Any] = {"model": f"{m.name}@{m.version}", "name": m.name, "version": m.version}
        fields |= {"sha256": m.sha256, "dim": m.dim}
        fields |= {"default": m.is_default, "name_default": m.is_name_default}
        print(json.dumps(fields))
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    """The container HEALTHCHECK: one Check call, the status on stdout, exit 1 unless SERVING."""
    with _channel(args) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s
            )
        except grpc.RpcError as exc:
            print(f"{args.address}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "health":
            return _cmd_health(args)
        if args.command == "models":
            return _cmd_models(args)
        if args.command == "info" and args.address:
            return _cmd_info_remote(args)
        config = _config(args)
        if args.command == "serve":
            return _cmd_serve(config)
        if args.command == "embed-file" and args.address:
            return bulk_cli.run_cli(config, args)  # the servers choose the model (--model)
        configured = [f"{b.manifest.name}@{b.manifest.version}" for b in configured_models(config).bundles]
        config = _pinned(config, args.model)
        if args.command == "embed":
            return _cmd_embed(config, args)
        if args.command == "embed-file":
            return bulk_cli.run_cli(config, args)
        if args.command == "explain":
            return explain_render.run_cli(config, args)
        return _cmd_info(config, configured)
    except EmbedderError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `... | head` closed our stdout
        return 0


if __name__ == "__main__":
    sys.exit(main())
