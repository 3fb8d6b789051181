"""The `embed-file` command: its flags, and which runner takes the job (here, through servers, or Ray).

The runners are `embedder.bulk.job` (in-process or `--address`) and `embedder.bulk.ray_bulk` (`--ray`,
imported only when asked for: Ray is an optional extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embedder.bulk.files import open_catalogue
from embedder.bulk.job import (
    BatchEmbedder,
    BulkError,
    BulkOptions,
    BulkReport,
    LocalEmbedder,
    RemoteEmbedder,
    check_batch_items,
    embed_file,
    parts_dir,
)
from embedder.config import ServerConfig
from embedder.options import add_cache_flag, add_vector_flags, request_flags


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `embed-file` flags (the serving config flags are added by the CLI next to these)."""
    d = BulkOptions()
    parser.add_argument("input", type=Path, help="JSONL catalogue: one {id, text} object per line")
    parser.add_argument("--out", type=Path, required=True, help="output .npy (+ .ids.jsonl) or .parquet")
    parser.add_argument(
        "--address", action="append", default=None, help="embed through this server (repeat for several)"
    )
    parser.add_argument("--text-field", default=d.text_field, help=f"(default {d.text_field!r})")
    parser.add_argument("--id-field", default=d.id_field, help=f"(default {d.id_field!r})")
    parser.add_argument("--shard-items", type=int, default=d.shard_items, help="rows per resumable shard")
    parser.add_argument("--batch-items", type=int, default=d.batch_items, help="texts per model call")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight with --address")
    parser.add_argument(
        "--model",
        default="",
        help="name or name@version: with --address, the servers' model; else one of the configured bundles",
    )
    add_vector_flags(parser, verb="store")
    add_cache_flag(parser)
    parser.add_argument("--restart", action="store_true", help="discard parts of an earlier run")
    parser.add_argument("--keep-parts", action="store_true", help="keep <out>.parts/ after joining")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--ray", action="store_true", help="run on Ray Data (extra `ray`): one ONNX session per actor"
    )
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start one here)")
    parser.add_argument("--ray-actors", type=int, default=0, help="embedding actors (0 = one per CPU)")


def options_from_args(args: argparse.Namespace) -> BulkOptions:
    return BulkOptions(
        text_field=args.text_field,
        id_field=args.id_field,
        shard_items=args.shard_items,
        batch_items=args.batch_items,
        **request_flags(args),
    )


def _run_ray(config: ServerConfig, options: BulkOptions, args: argparse.Namespace) -> BulkReport:
    if args.address:
        raise BulkError("--ray embeds in Ray actors; it cannot be combined with --address")
    check_batch_items(options, config)
    try:
        from embedder.bulk.ray_bulk import embed_file_ray
    except ImportError:
        raise BulkError("--ray needs the `ray` extra: pip install 'streamrec-embedder[ray]'") from None
    return embed_file_ray(
        args.input,
        args.out,
        config,
        options,
        address=args.ray_address,
        actors=args.ray_actors,
        progress=not args.no_progress,
    )


def _run_here(config: ServerConfig, options: BulkOptions, args: argparse.Namespace) -> BulkReport:
    embedder: BatchEmbedder = (
        RemoteEmbedder(args.address, options, args.concurrency, model=args.model)
        if args.address
        else LocalEmbedder(config, options)
    )
    try:
        return embed_file(
            args.input,
            args.out,
            embedder,
            options,
            restart=args.restart,
            keep_parts=args.keep_parts,
            progress=not args.no_progress,
        )
    finally:
        embedder.close()


def run_cli(config: ServerConfig, args: argparse.Namespace) -> int:
    """`streamrec-embedder embed-file`: in-process, through servers (--address), or on Ray (--ray)."""
    options = options_from_args(args)
    open_catalogue(args.input).close()  # a wrong path is said before any model loads
    try:
        report = _run_ray(config, options, args) if args.ray else _run_here(config, options, args)
    except KeyboardInterrupt:
        kept = "a Ray job restarts whole" if args.ray else f"finished shards are in {parts_dir(args.out)}"
        print(f"interrupted ({kept}): rerun the same command to resume", file=sys.stderr)
        return 130
    rate = report.rows / report.seconds if report.seconds > 0 else 0.0
    shards = f"; {report.shards_reused}/{report.shards} shards reused" if report.shards else ""
    done = f"{report.rows} rows x {report.dim} -> {args.out} in {report.seconds:.1f}s"
    print(f"{done} ({rate:.0f} items/s{shards})", file=sys.stderr)
    return 0
