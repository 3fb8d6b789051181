"""`streamrec-bench`: the CNN against its baselines on one serving stack; plus focused subcommands.

streamrec-bench                    full run (<= 20 min): every model, modes (a)(b)(c), quality, plots
streamrec-bench --quick            the same pipeline in < 2 min (a smoke test; `make test` runs it)
streamrec-bench --models cnn,minilm-fp32 --bundle DIR --rounds 2 --run-id NAME --out-dir DIR
streamrec-bench --resume RUN_ID    finish an interrupted run (finished phases are kept)
streamrec-bench serving --bundle models/streamrec-cnn-v2 [--rounds 2] [--inputs items] [--out FILE.json]
streamrec-bench baselines [--rebuild]   build the MiniLM fp32/int8 and model2vec bundles into the cache
streamrec-bench mixed-attack [--seconds 60] [--processes 1]   normal load under a Watch + long-text flood
streamrec-bench overhead --bundle DIR [--callers 64] [--seconds 5]   server vs model on its own batches
streamrec-bench cache --bundle DIR [--cache-mb 256] [--processes 1]   the cache on Zipf / unique streams
streamrec-bench infinity [--callers 8]   the Infinity peer (make infinity-venv) vs our server, same texts
streamrec-bench http --bundle DIR [--callers 16]   the OpenAI-style HTTP front next to gRPC, one server

Add a subcommand by writing `_add_<name>(sub)` and listing it in SUBCOMMANDS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.inputs import INPUT_SETS, Inputs  # numpy + tokenizers: ~0.2 s, the one eager import of --help
from embedder.config import DEFAULT_BUNDLE

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# --quick runs are smoke tests, not results to commit: they go to the (git-ignored) cache by default.
QUICK_RESULTS_DIR = Path(__file__).resolve().parent / ".cache" / "results"


def add_input_flags(parser: argparse.ArgumentParser) -> None:
    """--inputs and --texts: the texts a run measures on (benchmarks/inputs.py)."""
    parser.add_argument(
        "--inputs",
        choices=INPUT_SETS,
        default="items",
        help="text set: items = held-out Debian catalogue items of 20-40 words (default); "
        "heldout = the training corpus's held-out split",
    )
    parser.add_argument("--texts", metavar="FILE", help="measure on your own texts instead: JSONL or TXT")


def _inputs(args: argparse.Namespace) -> Inputs:
    """The texts a focused subcommand measures on (--inputs, --texts, --input-texts)."""
    from benchmarks.inputs import load_inputs

    texts_file = Path(args.texts) if args.texts else None
    return load_inputs(args.input_texts, input_set=args.inputs, texts_file=texts_file)


def _write_out(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """--out: the JSON report, next to the markdown printed on stdout."""
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


def _run_serving(args: argparse.Namespace) -> int:
    from benchmarks.serving import markdown, run_serving_benchmark  # lazy: keeps `--help` fast

    inputs = _inputs(args)
    report = run_serving_benchmark(Path(args.bundle), inputs, rounds=args.rounds, seconds=args.seconds)
    _write_out(args, report)
    print(markdown(report))
    return 0


def _add_serving(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serving", help="end-to-end gRPC vs in-process throughput, latency, RSS, start time")
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help=f"bundle directory (default {DEFAULT_BUNDLE})")
    p.add_argument("--rounds", type=int, default=2, help="interleaved gRPC / in-process rounds (default 2)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per load run (default 5)")
    p.add_argument("--input-texts", type=int, default=4096, help="distinct texts to use (default 4096)")
    p.add_argument("--out", help="also write the JSON report here")
    add_input_flags(p)
    p.set_defaults(run=_run_serving)


def _run_baselines(args: argparse.Namespace) -> int:
    from benchmarks.baselines import BASELINES, DEFAULT_CACHE, ensure_baseline

    for name in BASELINES:
        print(f"{name}: {ensure_baseline(name, DEFAULT_CACHE, rebuild=args.rebuild)}", flush=True)
    return 0


def _add_baselines(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("baselines", help="build (or check) the cached baseline bundles ahead of a run")
    p.add_argument("--rebuild", action="store_true", help="rebuild even when a valid bundle is cached")
    p.set_defaults(run=_run_baselines)


def _run_mixed_attack(args: argparse.Namespace) -> int:
    from benchmarks.mixed_attack import main as mixed_attack  # lazy: keeps `--help` fast

    return mixed_attack(
        args.bundle, args.seconds, args.out, args.baseline_seconds, args.attackers, processes=args.processes
    )


def _attacker_names(text: str) -> list[str]:
    """`--attackers watch,long` -> ["watch", "long"]; argparse prints the error on one line."""
    from benchmarks.mixed_attack import check_attackers

    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        check_attackers(names)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return names


def _add_mixed_attack(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mixed-attack", help="normal keyed load under a Watch flood + long-text flood: p99, RSS, health"
    )
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help=f"bundle directory (default {DEFAULT_BUNDLE})")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the attack (default 60)")
    p.add_argument("--baseline-seconds", type=float, default=10.0, help="unloaded phase (default 10)")
    p.add_argument(
        "--attackers",
        type=_attacker_names,
        default=["watch", "long"],
        help="attacker processes, comma-separated: watch, long (default both; one alone shows its cost)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes (`serve --processes`; default 1); every caller kind then uses 4 "
        "connections per process",
    )
    p.add_argument("--out", help="also write the JSON report here")
    p.set_defaults(run=_run_mixed_attack)


def _run_overhead(args: argparse.Namespace) -> int:
    from benchmarks.overhead import markdown, run_overhead

    inputs = _inputs(args)
    flags = {"min_padding_efficiency": args.min_padding_efficiency} if args.min_padding_efficiency else {}
    report = run_overhead(
        Path(args.bundle),
        inputs,
        callers=args.callers,
        seconds=args.seconds,
        ideal_batch=args.ideal_batch,
        server_flags=flags,
    )
    _write_out(args, report)
    print(markdown(report))
    return 0


def _add_overhead(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "overhead",
        help="(c) the server with its batch log, (a) the model on the server's exact batches, "
        "(b) the model on sorted batches of the same texts; padding efficiency of each",
    )
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help=f"bundle directory (default {DEFAULT_BUNDLE})")
    p.add_argument("--callers", type=int, default=64, help="closed-loop gRPC callers (default 64)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement (default 5)")
    p.add_argument("--ideal-batch", type=int, default=32, help="rows per sorted batch in (b) (default 32)")
    p.add_argument(
        "--min-padding-efficiency",
        type=float,
        default=0.0,
        help="the server's setting of that knob (default 0)",
    )
    p.add_argument("--input-texts", type=int, default=4096, help="distinct texts to use (default 4096)")
    p.add_argument("--out", help="also write the JSON report here")
    add_input_flags(p)
    p.set_defaults(run=_run_overhead)


def _run_cache(args: argparse.Namespace) -> int:
    from benchmarks.cache_bench import ROUNDS, WARM_REQUESTS, markdown, run_cache_bench

    if args.warm_requests is not None and args.warm_requests < 0:
        print(f"--warm-requests must be >= 0 (got {args.warm_requests})", file=sys.stderr)
        return 2
    if args.rounds is not None and args.rounds < 1:
        print(f"--rounds must be >= 1 (got {args.rounds})", file=sys.stderr)
        return 2
    report = run_cache_bench(
        Path(args.bundle),
        callers=args.callers,
        seconds=args.seconds,
        distinct=args.distinct,
        cache_mb=args.cache_mb,
        warm_requests=WARM_REQUESTS if args.warm_requests is None else args.warm_requests,
        rounds=ROUNDS if args.rounds is None else args.rounds,
        processes=args.processes,
        connections=args.connections,
    )
    _write_out(args, report)
    print(markdown(report))
    return 0


def _add_cache(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cache", help="the embedding cache over gRPC: a Zipf stream and a no-repeat stream, off vs on"
    )
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help=f"bundle directory (default {DEFAULT_BUNDLE})")
    p.add_argument("--callers", type=int, default=64, help="closed-loop gRPC callers (default 64)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per cell (default 5)")
    p.add_argument(
        "--distinct", type=int, default=100_000, help="distinct items of the Zipf stream (default 100000)"
    )
    p.add_argument("--cache-mb", type=float, default=256.0, help="the cache's bound in MiB (default 256)")
    p.add_argument(
        "--warm-requests",
        type=int,
        default=None,
        help="requests of each stream answered before the window, not measured (default: "
        "benchmarks/cache_bench.py's WARM_REQUESTS, ~the catalogue's size in items; 0 = an empty cache)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="off/on pairs per stream, interleaved (off, on, on, off, ...) and averaged (default: "
        "benchmarks/cache_bench.py's ROUNDS)",
    )
    _add_processes_flags(p)
    p.add_argument("--out", help="also write the JSON report here")
    p.set_defaults(run=_run_cache)


def _add_processes_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes on the port (`serve --processes`; default 1); each cell's server has them",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=0,
        help="connections the callers share (default 0: 1 for one server process, 4 per process for "
        "several, as the kernel spreads connections, not calls, over them)",
    )


def _run_infinity(args: argparse.Namespace) -> int:
    from benchmarks.baselines import DEFAULT_CACHE, ensure_baseline, teacher_dir
    from benchmarks.infinity_peer import markdown, run_infinity_peer

    inputs = _inputs(args)
    report = run_infinity_peer(
        Path(args.bundle),
        ensure_baseline("minilm-fp32", DEFAULT_CACHE),
        teacher_dir(),
        inputs,
        callers=args.callers,
        seconds=args.seconds,
        rounds=args.rounds,
    )
    _write_out(args, report)
    print(markdown(report))
    return 0


def _add_infinity(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "infinity",
        help="the Infinity peer (make infinity-venv) serving MiniLM over HTTP vs our server (MiniLM, CNN)",
    )
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help=f"the CNN bundle (default {DEFAULT_BUNDLE})")
    p.add_argument("--callers", type=int, default=8, help="closed-loop callers (default 8)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per server (default 2)")
    p.add_argument("--input-texts", type=int, default=4096, help="distinct texts to use (default 4096)")
    p.add_argument("--out", help="also write the JSON report here")
    add_input_flags(p)
    p.set_defaults(run=_run_infinity)


def _run_http(args: argparse.Namespace) -> int:
    from benchmarks.http_front import markdown, run_http_vs_grpc

    inputs = _inputs(args)
    report = run_http_vs_grpc(
        Path(args.bundle), inputs, callers=args.callers, seconds=args.seconds, rounds=args.rounds
    )
    _write_out(args, report)
    print(markdown(report))
    return 0


def _add_http(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("http", help="the OpenAI-compatible HTTP front next to gRPC on one server, same texts")
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help=f"bundle directory (default {DEFAULT_BUNDLE})")
    p.add_argument("--callers", type=int, default=16, help="closed-loop callers per front (default 16)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--input-texts", type=int, default=4096, help="distinct texts to use (default 4096)")
    p.add_argument("--out", help="also write the JSON report here")
    add_input_flags(p)
    p.set_defaults(run=_run_http)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_serving,
    _add_baselines,
    _add_overhead,
    _add_cache,
    _add_infinity,
    _add_http,
    _add_mixed_attack,
]


def _run_suite(args: argparse.Namespace) -> int:
    from benchmarks.config import SuiteConfig
    from benchmarks.models import DEFAULT_MODELS, resolve_models  # lazy: keeps `--help` fast
    from benchmarks.suite import run_suite

    cfg = SuiteConfig.quick_preset() if args.quick else SuiteConfig()
    if args.rounds is not None:
        cfg = dataclasses.replace(cfg, rounds=args.rounds)
    if args.time_scale != 1.0:
        cfg = cfg.scaled(args.time_scale)
    cfg = dataclasses.replace(cfg, input_set=args.inputs, texts_file=args.texts or "")
    keys = args.models.split(",") if args.models else list(DEFAULT_MODELS)
    run_id = args.resume or args.run_id or time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    out_dir = args.out_dir or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)
    run_dir = Path(out_dir) / run_id
    if run_dir.exists() and not args.resume and (run_dir / "results.json").exists():
        print(f"{run_dir} already holds a finished run; pick another --run-id", file=sys.stderr)
        return 2
    models, skipped = resolve_models(
        keys, Path(args.bundle) if args.bundle else None, cfg.quick, on_build=lambda k: None
    )
    if not models:
        print(f"no model could be prepared: {skipped}", file=sys.stderr)
        return 1
    for key, why in skipped.items():
        print(f"skipping {key}: {why}", file=sys.stderr)
    from benchmarks.report import console_summary

    results = run_suite(cfg, models, skipped, run_dir)
    print(console_summary(results))
    print(f"report: {run_dir / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamrec-bench",
        description="StreamRec embedder benchmarks. Without a subcommand: the full CNN-vs-baselines run.",
    )
    parser.add_argument("--quick", action="store_true", help="< 2 min smoke run of the whole pipeline")
    parser.add_argument(
        "--models",
        help="comma-separated: cnn, minilm-fp32, minilm-int8, model2vec, or bundle dirs (default: all four)",
    )
    parser.add_argument(
        "--bundle", help=f"the CNN bundle (default {DEFAULT_BUNDLE}; a random-weight one if absent)"
    )
    parser.add_argument(
        "--out-dir",
        help="parent of the run directory (default benchmarks/results; --quick: benchmarks/.cache/results)",
    )
    parser.add_argument("--run-id", help="run directory name (default: UTC-ish timestamp)")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue this unfinished run in --out-dir")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per cell (default 3; 1 with --quick)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every measured duration")
    add_input_flags(parser)
    parser.set_defaults(run=_run_suite)
    sub = parser.add_subparsers(dest="command")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
