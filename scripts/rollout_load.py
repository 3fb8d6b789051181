"""Rollout under load, the long version: N closed-loop callers for D seconds against a real server while a
new version is added, made default, and the old one removed (issue 13's target: 64 callers, 60 s).

    python scripts/rollout_load.py --old OLD_BUNDLE --new NEW_BUNDLE [--callers 64] [--seconds 60]

OLD and NEW are two versions of one model (same manifest name). The script builds a model repository in
a temporary folder with OLD, starts `streamrec-embedder serve --model-repository` on a free port, and at
1/4, 2/4 and 3/4 of the run: copies NEW in (with a `default` file still naming OLD) and sends SIGHUP;
rewrites `default` to NEW and sends SIGHUP; deletes OLD and sends SIGHUP. A quarter of the callers pin
OLD ("name@old"); the rest send no model. It prints JSON: calls, calls per version and failures per
kind of caller, and the checks: unpinned failures (want 0), versions going back (want 0), vectors that
are not their labelled version's (want 0, compared with each bundle's in-process output), pinned
failures other than FAILED_PRECONDITION (want 0). The shorter, bounded form runs in
tests/integration/test_rollout.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import numpy as np

from embedder.client import decode
from embedder.config import load_config
from embedder.core.bundle import Bundle, load_bundle
from embedder.core.engine import EmbeddingEngine
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc

TEXTS = [f"item {i}: a film about {w} and a long road trip" for i, w in enumerate("abcdefghijklmnop")]


@dataclass
class Tally:
    model: str
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    went_back: int = 0
    mislabelled: int = 0
    last: str = ""
    by_version: dict[str, int] = field(default_factory=dict)


def reference(bundle: Bundle) -> np.ndarray:
    engine = EmbeddingEngine(bundle, load_config({"bundle": str(bundle.path), "workers": 1}, env={}))
    try:
        return np.concatenate([engine.embed_in_process([t]) for t in TEXTS])
    finally:
        engine.close_sync()


def caller(
    t: Tally, address: str, expected: dict[str, np.ndarray], order: list[str], stop: threading.Event
) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.EmbedderStub(channel)
        i = 0
        while not stop.is_set():
            try:
                r = stub.Embed(pb.EmbedRequest(texts=[TEXTS[i % len(TEXTS)]], model=t.model), timeout=30)
            except grpc.RpcError as exc:
                t.errors[exc.code().name] = t.errors.get(exc.code().name, 0) + 1
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    return
                continue
            t.ok += 1
            if t.last and order.index(r.model_version) < order.index(t.last):
                t.went_back += 1
            t.last = r.model_version
            t.by_version[r.model_version] = t.by_version.get(r.model_version, 0) + 1
            if not np.allclose(decode(r)[0], expected[r.model_version][i % len(TEXTS)], atol=1e-5):
                t.mislabelled += 1
            i += 1


def _drain(stream: IO[str]) -> None:
    """Keep reading the server's log so it never blocks on a full pipe."""
    for _ in stream:
        pass


def start_server(repo: Path) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "embedder.cli", "serve", "--model-repository", str(repo)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    assert proc.stderr is not None
    for line in proc.stderr:
        if m := re.search(r"serving .* on port (\d+)", line):
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit("server exited before serving")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    old, new = load_bundle(args.old), load_bundle(args.new)
    name, v_old, v_new = old.manifest.name, old.manifest.version, new.manifest.version
    if new.manifest.name != name or v_old == v_new:
        raise SystemExit("--old and --new must be two versions of one model")
    expected = {v_old: reference(old), v_new: reference(new)}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        shutil.copytree(old.path, repo / name / v_old)
        proc, port = start_server(repo)
        pinned = args.callers // 4
        tallies = [Tally(f"{name}@{v_old}") for _ in range(pinned)]
        tallies += [Tally("") for _ in range(args.callers - pinned)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=caller, args=(t, f"127.0.0.1:{port}", expected, [v_old, v_new], stop))
            for t in tallies
        ]
        for t in threads:
            t.start()
        steps = [
            lambda: (
                shutil.copytree(new.path, repo / name / v_new),
                (repo / name / "default").write_text(v_old),
            ),
            lambda: (repo / name / "default").write_text(v_new),
            lambda: shutil.rmtree(repo / name / v_old),
        ]
        for step in steps:
            time.sleep(args.seconds / 4)  # a load script paces its phases by the clock; tests use events
            step()
            proc.send_signal(signal.SIGHUP)
        time.sleep(args.seconds / 4)
        stop.set()
        for t in threads:
            t.join(60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    unpinned = tallies[pinned:]

    def by_version(group: list[Tally]) -> dict[str, int]:
        return {v: sum(t.by_version.get(v, 0) for t in group) for v in (v_old, v_new)}

    report = {
        "callers": args.callers,
        "seconds": args.seconds,
        "unpinned_calls": sum(t.ok for t in unpinned),
        "unpinned_failures": sum(sum(t.errors.values()) for t in unpinned),
        "unpinned_calls_by_version": by_version(unpinned),
        "pinned_calls": sum(t.ok for t in tallies[:pinned]),
        "pinned_calls_by_version": by_version(tallies[:pinned]),
        "pinned_failed_precondition": sum(t.errors.get("FAILED_PRECONDITION", 0) for t in tallies[:pinned]),
        "pinned_other_failures": sum(
            n for t in tallies[:pinned] for c, n in t.errors.items() if c != "FAILED_PRECONDITION"
        ),
        "versions_went_back": sum(t.went_back for t in tallies),
        "mislabelled_vectors": sum(t.mislabelled for t in tallies),
    }
    print(json.dumps(report, indent=2))
    bad = report["unpinned_failures"] or report["pinned_other_failures"] or report["versions_went_back"]
    return 1 if bad or report["mislabelled_vectors"] else 0


if __name__ == "__main__":
    sys.exit(main())
