"""`streamrec-bench`: the CNN against its baselines on one serving stack; plus focused subcommands.

streamrec-bench                    full run (<= 20 min): every model, modes (a)(b)(c), quality, plots
streamrec-bench --quick            the same pipeline in < 2 min (a smoke test; `make test` runs it)
streamrec-bench --models cnn,minilm-fp32 --bundle DIR --rounds 2 --run-id NAME --out-dir DIR
streamrec-bench --resume RUN_ID    finish an interrupted run (finished phases are kept)
streamrec-bench serving --bundle models/streamrec-cnn-v1 [--rounds 2] [--seconds 5] [--out FILE.json]

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

DEFAULT_BUNDLE = "models/streamrec-cnn-v1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _run_serving(args: argparse.Namespace) -> int:
    from benchmarks.serving import markdown, run_serving_benchmark  # lazy: keeps `--help` fast

    report = run_serving_benchmark(Path(args.bundle), rounds=args.rounds, seconds=args.seconds)
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    print(markdown(report), file=sys.stderr if not args.out else sys.stdout)
    return 0


def _add_serving(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serving", help="end-to-end gRPC vs in-process throughput, latency, RSS, start time")
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help=f"bundle directory (default {DEFAULT_BUNDLE})")
    p.add_argument("--rounds", type=int, default=2, help="interleaved gRPC / in-process rounds (default 2)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per load run (default 5)")
    p.add_argument("--out", help="write the JSON report here (default: stdout)")
    p.set_defaults(run=_run_serving)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [_add_serving]


def _run_suite(args: argparse.Namespace) -> int:
    from benchmarks.models import DEFAULT_MODELS, resolve_models  # lazy: keeps `--help` fast
    from benchmarks.suite import SuiteConfig, run_suite

    cfg = SuiteConfig.quick_preset() if args.quick else SuiteConfig()
    if args.rounds is not None:
        cfg = dataclasses.replace(cfg, rounds=args.rounds)
    if args.time_scale != 1.0:
        cfg = cfg.scaled(args.time_scale)
    keys = args.models.split(",") if args.models else list(DEFAULT_MODELS)
    run_id = args.resume or args.run_id or time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    run_dir = Path(args.out_dir) / run_id
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
    run_suite(cfg, models, skipped, run_dir)
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
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="parent of the run directory")
    parser.add_argument("--run-id", help="run directory name (default: UTC-ish timestamp)")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue this unfinished run in --out-dir")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per cell (default 3; 1 with --quick)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiply every measured duration")
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
