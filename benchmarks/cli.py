"""`streamrec-bench`: benchmark subcommands. Add one by writing `_add_<name>(sub)` and listing it below.

streamrec-bench serving --bundle models/streamrec-cnn-v1 [--rounds 2] [--seconds 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_BUNDLE = "models/streamrec-cnn-v1"


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec-bench", description="StreamRec embedder benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
