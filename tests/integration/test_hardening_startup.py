"""Start-up: a missing, corrupt or mismatched bundle stops `streamrec-embedder serve` with a non-zero exit
and a one-line reason, within 1 s more than the CLI takes to start and stop at once (wall time of the
whole CLI process, Python's own start-up and imports included, measured in the same run) on an idle
machine. The baseline is measured rather than assumed: the imports alone took 0.3-0.4 s on one machine
of this kind and 0.6-0.8 s on another (2026-12-03), so an absolute 1-s bound failed by 4 ms on a model
load that cost 0.25 s.

Measured 2026-12-02 on the 2-core VM: 0.30-0.42 s CPU (wall about the same) idle; with four CPU-bound
processes competing (two numpy matmul loops, two spinners; load average 9-12): 0.36-0.54 s CPU and
2.7-5.4 s wall; once, in a full `make test` beside a training job, 1.05 s CPU. CPU time grows under load
too (shared caches, a busy sibling hyperthread), so its budget is 2 s: a loaded machine holds it, and a
real regression still breaks it (importing torch alone costs ~1.0 s CPU here, on top of the ~0.4 s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from embedder.core.bundle import MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE, Bundle, file_sha256
from tests.hardening import run_cli
from tests.unit.test_bundle import swap_two_vocabulary_ids

START_UP_BUDGET_S = 1.0  # wall beyond the CLI's own start-up, on an idle machine
START_UP_CPU_BUDGET_S = 2.0  # CPU, on any machine (see the docstring)
Breaker = Callable[[Path], None]


def _manifest(root: Path) -> dict[str, object]:
    raw: dict[str, object] = json.loads((root / MANIFEST_FILE).read_text())
    return raw


def _set(root: Path, **fields: object) -> None:
    (root / MANIFEST_FILE).write_text(json.dumps({**_manifest(root), **fields}))


def _truncate(root: Path, name: str) -> None:
    data = (root / name).read_bytes()
    (root / name).write_bytes(data[: len(data) // 3])


def _truncate_and_rehash(root: Path) -> None:
    """A truncated model whose manifest was (wrongly) re-hashed: only loading it can tell."""
    _truncate(root, MODEL_FILE)
    _set(root, sha256=file_sha256(root / MODEL_FILE))


def _truncate_tokenizer_and_rehash(root: Path) -> None:
    _truncate(root, TOKENIZER_FILE)
    _set(root, tokenizer_sha256=file_sha256(root / TOKENIZER_FILE))


def _wrong_dim(root: Path) -> None:
    dim = _manifest(root)["dim"]
    assert isinstance(dim, int)
    _set(root, dim=dim * 2, matryoshka_dims=[])


# name -> (how to break a copy of the bundle, what the one-line reason must say)
CASES: dict[str, tuple[Breaker, str]] = {
    "missing-directory": (shutil.rmtree, "bundle directory not found"),
    "missing-model": (lambda root: (root / MODEL_FILE).unlink(), "is missing model.onnx"),
    "missing-tokenizer": (lambda root: (root / TOKENIZER_FILE).unlink(), "is missing tokenizer.json"),
    "bad-sha256": (lambda root: _set(root, sha256="0" * 64), "model.onnx sha256 .* does not match manifest"),
    "truncated-onnx": (lambda root: _truncate(root, MODEL_FILE), "model.onnx sha256 .* does not match"),
    "truncated-onnx-rehashed": (_truncate_and_rehash, "cannot load ONNX model"),
    "bad-json": (lambda root: (root / MANIFEST_FILE).write_text('{"format_version": 1,'), "not valid JSON"),
    "format-version": (lambda root: _set(root, format_version=3), "format_version 3 is not supported"),
    "swapped-vocabulary": (swap_two_vocabulary_ids, r"tokenizer\.json sha256 .* does not match manifest"),
    "dim-as-string": (lambda root: _set(root, dim="384"), "manifest field 'dim' must be an integer"),
    "unknown-key": (lambda root: _set(root, colour="blue"), r"unknown manifest keys \['colour'\]"),
    "dim-mismatch": (_wrong_dim, r"model outputs shape \(2, \d+\) for 2 texts; manifest says dim="),
    "truncated-tokenizer": (lambda root: _truncate(root, TOKENIZER_FILE), "tokenizer.json sha256 .* not"),
    "corrupt-tokenizer-rehashed": (_truncate_tokenizer_and_rehash, "cannot read tokenizer"),
}


def machine_is_busy() -> bool:
    """Runnable work is waiting for a core: a test process then waits for CPU, not for itself.

    The 1-minute load average lags a load that just started, so the kernel's CPU pressure (share of the
    last 10 s in which some task waited for a CPU) is asked too where it exists.
    """
    if os.getloadavg()[0] >= (os.cpu_count() or 1):
        return True
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return False
    return float(some.split()[1].removeprefix("avg10=")) >= 10.0


@pytest.fixture(scope="module")
def cli_start_s(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Wall time of the CLI stopping before it reads any bundle file (best of 3): its imports, mostly."""
    missing = tmp_path_factory.mktemp("none") / "no-bundle"
    args = ("serve", "--bundle", str(missing), "--port", "0", "--metrics-port", "-1")
    return min(run_cli(*args)[2] for _ in range(3))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bundle_exits_non_zero_with_one_line_within_1s(
    bundle: Bundle, tmp_path: Path, case: str, cli_start_s: float
) -> None:
    """The bound is on wall time; on a machine whose cores are all busy (the training job, other test
    runs) a niced process waits seconds for a CPU, so there only the CPU time the process spent is bounded
    (its own cost, which is what start-up can control); wall time is printed either way."""
    root = tmp_path / "bundle"
    shutil.copytree(bundle.path, root)
    breaker, reason = CASES[case]
    breaker(root)
    code, lines, wall_s, cpu_s = run_cli(
        "serve", "--bundle", str(root), "--port", "0", "--metrics-port", "-1"
    )
    busy = machine_is_busy()
    print(
        f"\n{case}: exit {code} after {wall_s:.2f}s wall (CLI start-up {cli_start_s:.2f}s), {cpu_s:.2f}s CPU "
        f"(busy machine: {busy}): {lines}"
    )
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("streamrec-embedder: error: "), lines
    assert re.search(reason, lines[0]), lines[0]
    assert cpu_s < START_UP_CPU_BUDGET_S, f"{case}: {cpu_s:.2f}s CPU"
    if not busy:
        assert wall_s < cli_start_s + START_UP_BUDGET_S, (
            f"{case}: {wall_s:.2f}s wall, start-up {cli_start_s:.2f}s"
        )


@pytest.mark.parametrize("which", ["grpc", "metrics", "http"])
def test_a_taken_port_exits_with_one_line_and_no_traceback(bundle: Bundle, which: str) -> None:
    """A port already in use (a second `make run`, another exporter on 9000) stops start-up with the
    CLI's one-line error naming the port, not a traceback, and leaves nothing behind to complain at exit
    (gRPC's finalizer used to log "Event loop is closed" when the metrics port was taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = str(taken.getsockname()[1])
        ports = {"grpc": "0", "metrics": "-1", "http": "-1"}
        ports[which] = busy_port
        code, lines, _wall, _cpu = run_cli(
            "serve", "--bundle", str(bundle.path), "--host", "127.0.0.1", "--port", ports["grpc"],
            "--metrics-port", ports["metrics"], "--metrics-host", "127.0.0.1",
            "--http-port", ports["http"], "--http-host", "127.0.0.1",
        )  # fmt: skip
    print(f"\n{which}: exit {code}: {lines}")
    assert code == 1
    errors = [line for line in lines if line.startswith("streamrec-embedder: error: ")]
    assert len(errors) == 1 and "cannot bind" in errors[0] and busy_port in errors[0], lines
    assert lines[-1] == errors[0], lines
    assert not any("Traceback" in line or "Event loop is closed" in line for line in lines), lines
