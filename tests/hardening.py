"""Helpers for the hardening tests: a fault-injecting session (the `session_factory` seam), a server on
that seam, a server subprocess, metrics scraping and outcome counting.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from embedder.config import ServerConfig
from embedder.core.bundle import Bundle
from embedder.core.session import InferenceSession, SessionFactory, make_session
from embedder.grpc.server import create_server
from tests.support import ServerThread, make_config

SECRET = "onnx exploded at /srv/secret/model.onnx"


class Faults:
    """Shared by every session its factory makes; a test flips these fields from its own thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows_run = 0
        self.open = threading.Event()  # cleared: every run blocks until it is set again
        self.open.set()
        self.waiting = threading.Semaphore(0)  # released once per run that reached the gate
        self.fail_token: int | None = None  # a batch holding this token id raises
        self.hang_token: int | None = None  # a batch holding this token id hangs until `unhang`
        self.exit_token: int | None = None  # a batch holding this token id raises SystemExit
        self.unhang = threading.Event()
        self.seen: set[int] = set()  # every token id that reached the model (after the warm-up)

    def factory(self) -> SessionFactory:
        def make(path: Path, threads: int) -> InferenceSession:
            return FaultySession(make_session(path, threads), self)

        return make

    def reset_counts(self) -> None:
        """Forget the warm-up: zero the row count and drain the gate's arrivals."""
        with self.lock:
            self.rows_run = 0
            self.seen.clear()
        while self.waiting.acquire(blocking=False):
            pass


class FaultySession:
    """A real ONNX session behind a gate, with optional failure and hang on a chosen token id."""

    def __init__(self, inner: InferenceSession, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    def run(self, output_names: list[str], input_feed: dict[str, Any]) -> list[Any]:
        f = self.faults
        ids = np.asarray(input_feed["input_ids"])
        with f.lock:
            f.seen.update(int(i) for i in np.unique(ids))
        f.waiting.release()
        f.open.wait(60)
        if f.hang_token is not None and bool((ids == f.hang_token).any()):
            f.unhang.wait(60)
        if f.fail_token is not None and bool((ids == f.fail_token).any()):
            raise RuntimeError(SECRET)
        if f.exit_token is not None and bool((ids == f.exit_token).any()):
            raise SystemExit(SECRET)  # what ends a Python thread; a Rust panic is a BaseException too
        out = self.inner.run(output_names, input_feed)
        with f.lock:
            f.rows_run += ids.shape[0]
        return out


class FaultServer(ServerThread):
    """`ServerThread` whose sessions come from `faults` (the server's test seam)."""

    def __init__(self, bundle: Bundle, config: ServerConfig, faults: Faults) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self._thread.start()
        self.running = self.call(create_server(config, bundle, session_factory=faults.factory()))
        self.config = config
        self.faults = faults
        faults.reset_counts()


@contextmanager
def fault_server(bundle: Bundle, **overrides: Any) -> Iterator[FaultServer]:
    """A `FaultServer` with a fresh `Faults`; on exit every gate opens (no thread stays blocked)."""
    faults = Faults()
    # Gated or hung sessions must run on worker threads (an inline batch would hold the server's event
    # loop); tests of the inline path turn it back on and leave the gate open.
    overrides.setdefault("inline_infer_max_tokens", 0)
    srv = FaultServer(bundle, make_config(**overrides), faults)
    try:
        yield srv
    finally:
        faults.open.set()
        faults.unhang.set()
        srv.stop()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page as {(sample name, sorted labels): value}."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(url: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (e.g. over every model)."""
    wanted = set(labels.items())
    return sum(v for (n, labs), v in scrape(url).items() if n == name and wanted <= set(labs))


def wait_until(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def code_of(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return code().name if callable(code) else type(exc).__name__


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


@contextmanager
def server_process(
    bundle: Bundle, *flags: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
) -> Iterator[tuple[Any, int, list[str]]]:
    """`streamrec-embedder serve` as a subprocess on a free port: yields (proc, port, stderr lines).

    `env` adds variables to this process's environment (e.g. STREAMREC_EMBEDDER_API_KEYS)."""
    cmd = [sys.executable, "-m", "embedder.cli", "serve", "--bundle", str(bundle.path)]
    # The embedding cache is off unless a test asks for it (a later flag wins): a hit would hide the work
    # a test means to exercise.
    cmd += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1", "--embedding-cache-mb", "0", *flags]
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    port: list[int] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if not port and (m := re.search(r"serving .* on port (\d+)", line)):
                port.append(int(m.group(1)))

    threading.Thread(target=read, daemon=True).start()
    try:
        wait_until(lambda: bool(port) or proc.poll() is not None, timeout_s, "the server to log its port")
        if not port:
            raise AssertionError("server exited early:\n" + "".join(lines))
        yield proc, port[0], lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def tally(codes: list[str]) -> dict[str, int]:
    return dict(Counter(codes).most_common())


def is_status(exc: BaseException, *codes: grpc.StatusCode) -> bool:
    code = getattr(exc, "code", None)
    return callable(code) and code() in codes


def token_of(server: ServerThread, word: str) -> int:
    """The id of `word`, which must be a single token of the served tokenizer (between CLS and SEP)."""
    ids = server.running.engine.tokenizer.encode([word]).ids[0]
    if len(ids) != 3:
        raise AssertionError(f"{word!r} is {len(ids) - 2} tokens, not one")
    return ids[1]


def health_status(channel: grpc.Channel, service: str = "") -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=10
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def run_cli(*args: str) -> tuple[int, list[str], float, float]:
    """Run the real CLI in a fresh interpreter: (exit code, stderr lines, wall s from spawn, CPU s)."""
    cmd = [sys.executable, "-m", "embedder.cli", *args]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    stderr = proc.stderr.read()  # the reason is one short line: no pipe can fill up
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall_s = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, stderr.splitlines(), wall_s, usage.ru_utime + usage.ru_stime
