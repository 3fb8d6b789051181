"""Serving benchmark: one run measures everything issue 3 asks for, on one bundle.

- end-to-end gRPC throughput (requests of 32 texts of the chosen input set: by default `items`, held-out
  Debian catalogue items of 20-40 words; benchmarks/inputs.py), swept over a few server configs and
  caller counts, best reported; the server is a real subprocess (`streamrec-embedder serve`);
- in-process throughput (tokenizer + ONNX, same 32-text batches, as many threads as the server) and
  the efficiency ratio gRPC / in-process;
- one caller, one text per call: p50 / p99;
- server RSS (peak during load, psutil) and start-to-SERVING time.
The machine is shared, so the throughput figures are run in interleaved rounds; median and max reported.
The report names the input set and the CPU's flags: figures of two sets or two CPUs do not compare.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks import environment
from benchmarks.in_process import make_engine
from benchmarks.inputs import Inputs, requests_of
from benchmarks.loadgen import LoadResult, Window, closed_loop, cpu_s, rss_mb, single_caller_latency
from embedder.core.bundle import load_bundle

TARGETS = {
    "grpc_items_per_s": 5000.0,
    "efficiency": 0.8,
    "single_p50_ms": 2.0,
    "single_p99_ms": 10.0,
    "rss_mb": 400.0,
    "start_to_serving_s": 3.0,
}

# Server configs swept (flags of `streamrec-embedder serve`); the first is the shipped default.
SERVER_CONFIGS: tuple[dict[str, Any], ...] = (
    {},
    {"max_batch_items": 32, "max_wait_ms": 1.0},
    {"max_batch_items": 128, "tokenizer_threads": 1},
)
CONCURRENCY = (8, 32)


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    address: str
    start_to_serving_s: float
    peak_rss_mb: float = 0.0

    def rss_mb(self) -> float:
        """The server's RSS, its processes' summed when it has several (`processes` flag)."""
        return rss_mb(self.proc.pid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_serving(address: str, proc: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    # Generous: on a loaded machine a start takes a minute. The time is measured and reported, not judged.
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before SERVING")
            try:
                resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.01)
    raise TimeoutError(f"server at {address} not SERVING after {timeout_s}s")


# `python -m embedder.cli ARGS`, after asking Linux to SIGTERM the server when the thread that started it
# dies, even by SIGKILL (PR_SET_PDEATHSIG): a killed benchmark leaves no server behind. Done in the
# child's own interpreter (not a preexec_fn, which can deadlock a threaded parent); elsewhere a no-op.
_SERVE = (
    "import contextlib, ctypes, runpy, signal, sys\n"
    "with contextlib.suppress(OSError, AttributeError):\n"
    "    ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM)\n"
    "sys.argv[0] = 'embedder.cli'\n"
    "runpy.run_module('embedder.cli', run_name='__main__', alter_sys=True)\n"
)

# The same server with a null model (`null_model_dim`): every inference session answers zeros of the
# right shape without arithmetic, so what the server costs is the runtime alone (gRPC, Python, tokenizer,
# batching). Explain keeps its real session (it needs per-token outputs; no benchmark calls it).
_NULL_SESSIONS = (
    "import numpy as np\n"
    "import embedder.core.session as session\n"
    "import embedder.explain.explainer\n"  # keeps the real sessions: imported before the swap below
    "class NullSession:\n"
    "    def run(self, names, feed):\n"
    "        return [np.zeros((feed['input_ids'].shape[0], {dim}), np.float32)]\n"
    "session.make_session = lambda path, threads: NullSession()\n"
)


@contextmanager
def server_process(
    bundle: Path | Sequence[Path], *, null_model_dim: int | None = None, **flags: Any
) -> Iterator[ServerProcess]:
    """`streamrec-embedder serve` in a subprocess on a free port; timed from spawn to health SERVING.

    Several bundles: one server with every one of them loaded (`--bundle` repeated). The embedding cache
    is off unless `flags` sets it: benchmarks send the same texts round after round, and measure the
    runtime and the model, not the cache (`streamrec-bench cache` measures that). `null_model_dim`: the
    sessions are null ones answering zeros of that width (the runtime alone, `streamrec-bench overhead`)."""
    flags = {"embedding_cache_mb": 0, **flags}
    port = _free_port()
    code = _SERVE if null_model_dim is None else _NULL_SESSIONS.format(dim=null_model_dim) + _SERVE
    cmd = [sys.executable, "-c", code, "serve", "--host", "127.0.0.1"]
    for path in [bundle] if isinstance(bundle, Path) else bundle:
        cmd += ["--bundle", str(path)]
    cmd += ["--port", str(port), "--metrics-port", "-1", "--log-level", "WARNING"]
    for name, value in flags.items():
        cmd += ["--" + name.replace("_", "-"), str(value)]
    started = time.monotonic()
    # The shipped defaults plus `flags`, whatever STREAMREC_EMBEDDER_* the caller's shell exports.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_EMBEDDER_")}
    proc = subprocess.Popen(cmd, env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        address = f"127.0.0.1:{port}"
        _wait_serving(address, proc)
        yield ServerProcess(proc, address, time.monotonic() - started)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def rss_sampler(server: ServerProcess, every_s: float = 0.2) -> Iterator[None]:
    """Track the server's peak RSS while the block runs."""
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            server.peak_rss_mb = max(server.peak_rss_mb, server.rss_mb())
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def in_process_items_per_s(
    bundle: Path, requests: Sequence[list[str]], seconds: float = 5.0
) -> tuple[float, float]:
    """Tokenizer + ONNX on the same 32-text batches, no gRPC, no batcher.

    As many threads as the server runs (inference workers + tokenizer threads), so tokenizing one batch
    overlaps inference of another as it does in the server: on a shared machine, fewer runnable threads
    would also mean a smaller share of the CPU, and the ratio would flatter the server.
    Returns (items/s, CPU ms per item).
    """
    engine = make_engine(bundle)
    threads_n = engine.workers + engine.config.resolved_tokenizer_threads()
    counts = [0] * threads_n
    all_items = [0] * threads_n
    cpu_before = cpu_s()
    stop_at = time.monotonic() + 1.0 + seconds
    measure_from = time.monotonic() + 1.0

    def worker(i: int) -> None:
        k = i
        while (now := time.monotonic()) < stop_at:
            texts = requests[k % len(requests)]
            engine.sessions.embed_rows(engine.tokenizer.encode(texts).ids)
            all_items[i] += len(texts)
            if now >= measure_from:
                counts[i] += len(texts)
            k += threads_n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu_ms_per_item = (cpu_s() - cpu_before) * 1000.0 / max(1, sum(all_items))
    engine.close_sync()
    return sum(counts) / seconds, cpu_ms_per_item


def _grpc_sweep(
    bundle: Path, requests: list[list[str]], seconds: float
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    runs = []
    for flags in SERVER_CONFIGS:
        with server_process(bundle, **flags) as server, rss_sampler(server):
            for concurrency in CONCURRENCY:
                result = closed_loop(server.address, requests, concurrency, Window(seconds, min_requests=20))
                runs.append(
                    {"config": flags, **result.to_dict(), "server_rss_mb": round(server.peak_rss_mb, 1)}
                )
    best = max(runs, key=lambda r: r["items_per_s"])
    return runs, best


@dataclass
class _Rounds:
    """The figures of the interleaved gRPC / in-process rounds, one entry per round."""

    grpc_items_per_s: list[float] = field(default_factory=list)
    grpc_cpu_ms: list[float] = field(default_factory=list)
    client_cpu_ms: list[float] = field(default_factory=list)
    in_process_items_per_s: list[float] = field(default_factory=list)
    in_process_cpu_ms: list[float] = field(default_factory=list)
    starts_s: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    def ratios(self) -> list[float]:
        return [g / i for g, i in zip(self.grpc_items_per_s, self.in_process_items_per_s, strict=True)]


def _interleaved_rounds(
    bundle: Path, requests: list[list[str]], best: dict[str, Any], rounds: int, seconds: float
) -> _Rounds:
    """gRPC at the best swept config, then in-process, `rounds` times: the shared machine drifts between
    fast and slow states, so neither side gets all the fast ones."""
    out = _Rounds()
    for _ in range(rounds):
        with server_process(bundle, **best["config"]) as server, rss_sampler(server):
            out.starts_s.append(server.start_to_serving_s)
            window = Window(seconds, min_requests=20)
            r = closed_loop(server.address, requests, best["concurrency"], window, cpu_pid=server.proc.pid)
            out.grpc_cpu_ms.append(r.cpu_ms_per_item or 0.0)
            out.client_cpu_ms.append(r.client_cpu_ms_per_item or 0.0)
            out.grpc_items_per_s.append(r.items_per_s)
            out.peak_rss_mb = max(out.peak_rss_mb, server.peak_rss_mb)
        rate, cpu_ms = in_process_items_per_s(bundle, requests, seconds)
        out.in_process_items_per_s.append(rate)
        out.in_process_cpu_ms.append(cpu_ms)
    return out


def _summary(r: _Rounds, latency: LoadResult, idle_rss_mb: float) -> dict[str, Any]:
    grpc_cpu, inproc_cpu = statistics.median(r.grpc_cpu_ms), statistics.median(r.in_process_cpu_ms)
    return {
        "grpc_items_per_s": statistics.median(r.grpc_items_per_s),
        "grpc_items_per_s_max": max(r.grpc_items_per_s),
        "in_process_items_per_s": statistics.median(r.in_process_items_per_s),
        "in_process_items_per_s_max": max(r.in_process_items_per_s),
        "efficiency": statistics.median(r.ratios()),
        # Robust to other tenants: CPU per item, in-process vs server (the client's CPU reported apart).
        "server_cpu_ms_per_item": round(grpc_cpu, 4),
        "client_cpu_ms_per_item": round(statistics.median(r.client_cpu_ms), 4),
        "in_process_cpu_ms_per_item": round(inproc_cpu, 4),
        "cpu_efficiency": round(inproc_cpu / grpc_cpu, 3),
        "single_p50_ms": latency.p50_ms,
        "single_p99_ms": latency.p99_ms,
        "rss_mb": round(r.peak_rss_mb, 1),
        "idle_rss_mb": round(idle_rss_mb, 1),
        "start_to_serving_s": round(statistics.median(r.starts_s), 3),
    }


def run_serving_benchmark(
    bundle: Path, inputs: Inputs, rounds: int = 2, seconds: float = 5.0
) -> dict[str, Any]:
    """Everything in one run on `inputs` (requests of 32 of its texts); returns a JSON-able report."""
    requests = requests_of(inputs.texts, 32)
    sweep, best = _grpc_sweep(bundle, requests, seconds)
    measured = _interleaved_rounds(bundle, requests, best, rounds, seconds)
    with server_process(bundle) as server:
        latency = single_caller_latency(server.address, inputs.texts[:500])
        measured.starts_s.append(server.start_to_serving_s)
        idle_rss = server.rss_mb()
    return {
        "bundle": str(bundle),
        "manifest": dataclasses.asdict(load_bundle(bundle).manifest),
        "inputs": inputs.describe(),
        "environment": environment.describe(),
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "best_config": {"server_flags": best["config"], "concurrency": best["concurrency"]},
        "summary": _summary(measured, latency, idle_rss),
        "targets": TARGETS,
        "rounds": {
            "grpc_items_per_s": measured.grpc_items_per_s,
            "in_process_items_per_s": measured.in_process_items_per_s,
            "efficiency": measured.ratios(),
        },
        "sweep": sweep,
        "single_caller": latency.to_dict(),
    }


def markdown(report: dict[str, Any]) -> str:
    """The summary as a table with each target and pass/miss."""
    s, inputs, env = report["summary"], report["inputs"], report["environment"]
    lower_is_better = {"single_p50_ms", "single_p99_ms", "rss_mb", "start_to_serving_s"}
    lines = [
        f"Inputs: set `{inputs['set']}`, {inputs['count']} texts ({inputs['source']}), requests of 32 texts. "
        f"CPU: {env['cpu_model']}, {', '.join(env['cpu_flags']) or 'no AVX flags'}.",
        "",
        "| measure | value | target | |",
        "|---|---|---|---|",
    ]
    for key, target in report["targets"].items():
        ok = s[key] <= target if key in lower_is_better else s[key] >= target
        sign = "<=" if key in lower_is_better else ">="
        lines.append(f"| {key} | {s[key]:.3f} | {sign} {target:g} | {'ok' if ok else 'MISS'} |")
    for key in (
        "in_process_items_per_s",
        "server_cpu_ms_per_item",
        "in_process_cpu_ms_per_item",
        "cpu_efficiency",
    ):
        lines.append(f"| {key} | {s[key]:.4g} | | |")
    lines.append(f"\nbest config: {report['best_config']}; load average at end {report['load_avg_at_end']}")
    return "\n".join(lines)
