"""`serve --processes N`: N server processes on one port, each with its own event loop.

One process answers every call on one asyncio event loop, and gRPC's per-call work runs there: with the
embedding cache answering most texts, that loop, not the model, is what caps a server's calls per second,
and a 10-MB request stalls it for every other caller (docs/benchmarks.md). Several processes give several
loops. This module is their supervisor; it loads no model itself:

- it reserves the gRPC port (and the HTTP front's) with SO_REUSEPORT, after checking that nobody else
  holds it, and starts the processes one after another; each binds the same port with SO_REUSEPORT, so
  the kernel spreads *connections* among them (a connection, and every call on it, stays with one
  process: a client that wants the processes opens several connections);
- once every process is SERVING it logs the one "serving ... on port" line, and serves /metrics on
  `metrics_port`: every process's page (read from its private loopback port at each scrape), each series
  labelled `process="0".."N-1"`, plus its own `embedder_processes` and `embedder_process_restarts_total`;
- SIGHUP goes to every process; a ReloadModels call, which one process takes, is passed to the others;
- a process that dies is started again after a second; SIGTERM/SIGINT drains every process (each as a
  single server drains: docs/operations.md) and exits 0 once they have.

Per process: `workers` (0 = cores / N, at least 1), `embedding_cache_mb` / N, and every limit
(`max_concurrent_rpcs`, `max_queued_items`, ...) as configured, each process enforcing its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from prometheus_client import CollectorRegistry, Metric, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from embedder.config import ServerConfig
from embedder.errors import ConfigError, EmbedderError
from embedder.grpc.server import RunningServer, serve
from embedder.malloc import MallocTrimmer, tune_malloc

log = logging.getLogger(__name__)

_RESTART_DELAY_S = 1.0
_POLL_S = 0.2
# After the drain's grace period, how long the processes still get to exit before they are killed.
_EXIT_SLACK_S = 15.0
_SCRAPE_TIMEOUT_S = 2.0


def _passive_address(host: str, port: int) -> tuple[socket.AddressFamily, Any]:
    family, _, _, _, address = socket.getaddrinfo(
        host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, address


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket on host:port (0 = a free port), held by the supervisor
    for its lifetime so that the port stays ours while processes come and go. A port another server
    holds is a `ConfigError`: a socket of its own without SO_REUSEPORT cannot bind beside it, and an
    SO_REUSEPORT one would silently take a share of its connections."""
    family, address = _passive_address(host, port)
    where = f"{host}:{port}"
    try:
        if port:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                _dual_stack(probe)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        _dual_stack(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot bind {where}: {exc.strerror or exc}") from None
    return sock


def _dual_stack(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:  # "[::]" takes IPv4 too, as gRPC's own socket does
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)


def process_config(config: ServerConfig, index: int, port: int, http_port: int) -> ServerConfig:
    """What process `index` of `config.processes` serves with: the reserved ports, a private loopback
    /metrics (the supervisor's page gathers them), its share of the cores and of the cache."""
    n = config.processes
    workers = config.workers or max(1, (os.cpu_count() or 1) // n)
    return dataclasses.replace(
        config,
        processes=1,
        port=port,
        http_port=http_port,
        metrics_host="127.0.0.1",
        metrics_port=0 if config.metrics_port >= 0 else -1,
        workers=workers,
        embedding_cache_mb=config.embedding_cache_mb / n,
    )


def _die_with_parent() -> None:
    """SIGTERM this process when the supervisor dies, even by SIGKILL (Linux; elsewhere a no-op): no
    process is left serving on the port without it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _process_main(config: ServerConfig, index: int, conn: Connection) -> None:
    """One server process: serve until SIGTERM; tell the supervisor when ready, and of ReloadModels."""
    _die_with_parent()
    # Ctrl-C reaches every process of the terminal's group: the supervisor alone acts on it (SIGTERM to
    # each), until `serve` takes the signal over once loaded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [process {index}] %(name)s: %(message)s",
    )
    tune_malloc(config.malloc_arenas)
    trimmer = MallocTrimmer(config.malloc_trim_free_mb).start()

    def ready(running: RunningServer, start_s: float) -> None:
        conn.send(
            (
                "ready",
                {
                    "default": running.registry.resolve("").key,
                    "loaded": running.registry.describe(),
                    "metrics_port": running.metrics_port,
                    "workers": running.engine.workers,
                    "start_s": start_s,
                },
            )
        )

    try:
        asyncio.run(
            serve(config, reuse_port=True, on_ready=ready, after_reload=lambda: conn.send(("reload", index)))
        )
    except EmbedderError as exc:
        conn.send(("error", str(exc)))
        sys.exit(1)
    finally:
        trimmer.stop()


@dataclass
class _Process:
    index: int
    proc: multiprocessing.process.BaseProcess
    conn: Connection
    started: float
    again: bool = False  # started again after an exit
    ready: dict[str, Any] | None = None
    error: str = ""


@dataclass(eq=False)  # hashable: prometheus_client's registry keys its collectors
class Supervisor:
    """Starts, watches and stops the processes of one `serve --processes N`."""

    config: ServerConfig
    port: int
    http_port: int
    processes: dict[int, _Process] = field(default_factory=dict)
    restarts: int = 0
    _signals: list[int] = field(default_factory=list)
    _stopped: bool = False
    _exit_code: int = 0
    _context: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))

    def start(self, index: int, again: bool = False) -> _Process:
        ours, theirs = self._context.Pipe()
        config = process_config(self.config, index, self.port, self.http_port)
        proc = self._context.Process(
            target=_process_main, args=(config, index, theirs), name=f"streamrec-embedder-{index}"
        )
        proc.start()
        theirs.close()
        self.processes[index] = _Process(index, proc, ours, time.monotonic(), again)
        return self.processes[index]

    def start_all(self) -> bool:
        """One after another (their loads do not compete). False if told to stop meanwhile; the first
        process that fails raises its one-line reason."""
        for index in range(self.config.processes):
            p = self.start(index)
            while p.ready is None:
                self._poll()
                if any(s != signal.SIGHUP for s in self._signals):
                    return False
                if not p.proc.is_alive() and p.ready is None:
                    self._drain_messages(p)
                    reason = p.error or f"exited with {p.proc.exitcode} before serving"
                    raise ConfigError(reason if p.error else f"server process {index} {reason}")
        return True

    def _drain_messages(self, p: _Process) -> None:
        with contextlib.suppress(EOFError, OSError):
            while p.conn.poll():
                self._message(p, p.conn.recv())

    def _message(self, p: _Process, message: tuple[str, Any]) -> None:
        kind, body = message
        if kind == "ready":
            p.ready = body
            if p.again:
                log.info("server process %d serving again after %.2fs", p.index, body["start_s"])
        elif kind == "error":
            p.error = body
        elif kind == "reload":  # ReloadModels reached process `body`: the others reload too
            self.signal_all(signal.SIGHUP, but=body)

    def _poll(self) -> None:
        """Wait up to _POLL_S for a message or an exit; handle messages; restart the dead (unless
        stopping, or before every process first served)."""
        waitables: list[Any] = [p.conn for p in self.processes.values()]
        waitables += [p.proc.sentinel for p in self.processes.values()]
        for ready in wait(waitables, timeout=_POLL_S):
            for p in list(self.processes.values()):
                if ready is p.conn:
                    self._drain_messages(p)

    def signal_all(self, sig: int, but: int = -1) -> None:
        for p in self.processes.values():
            if p.index != but and p.proc.is_alive() and p.proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.proc.pid, sig)

    def on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT: forward SIGHUP, restart processes that die; then drain all."""
        while True:
            self._poll()
            while self._signals:
                signum = self._signals.pop(0)
                if signum == signal.SIGHUP:
                    log.info("SIGHUP: every process reloads its models")
                    self.signal_all(signal.SIGHUP)
                else:
                    return self.stop()
            for p in list(self.processes.values()):
                if not p.proc.is_alive():
                    self._drain_messages(p)
                    log.warning(
                        "server process %d exited with %s%s; starting it again in %.0fs",
                        p.index,
                        p.proc.exitcode,
                        f" ({p.error})" if p.error else "",
                        _RESTART_DELAY_S,
                    )
                    p.conn.close()
                    time.sleep(_RESTART_DELAY_S)
                    self.restarts += 1
                    self.start(p.index, again=True)

    def stop(self) -> int:
        """SIGTERM to every process (each drains: NOT_SERVING, refusals, grace), wait, kill leftovers."""
        if self._stopped:
            return self._exit_code
        self._stopped = True
        draining = [p for p in self.processes.values() if p.proc.is_alive()]
        if draining:
            log.info("draining %d server processes", len(draining))
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace_period_s + _EXIT_SLACK_S
        for p in self.processes.values():
            p.proc.join(max(0.0, deadline - time.monotonic()))
            if p.proc.is_alive():
                log.warning("server process %d did not exit in time; killing it", p.index)
                p.proc.kill()
                p.proc.join()
        codes = [p.proc.exitcode for p in self.processes.values()]
        if draining:
            log.info("stopped; server processes exited with %s", codes)
        self._exit_code = 0 if all(code == 0 for code in codes) else 1
        return self._exit_code

    # -- /metrics: every process's page, labelled ---------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for p in self.processes.values():
            port = (p.ready or {}).get("metrics_port")
            if not port or not p.proc.is_alive():
                continue
            try:
                with urllib.request.urlopen(  # our own process, on loopback
                    f"http://127.0.0.1:{port}/metrics", timeout=_SCRAPE_TIMEOUT_S
                ) as page:
                    text = page.read().decode("utf-8")
            except OSError as exc:
                log.warning("cannot read process %d's metrics: %s", p.index, exc)
                continue
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                merged.samples += [
                    Sample(s.name, {**s.labels, "process": str(p.index)}, s.value, s.timestamp, s.exemplar)
                    for s in family.samples
                ]
        yield from families.values()
        alive = Metric("embedder_processes", "Server processes alive under the supervisor.", "gauge")
        alive.add_sample("embedder_processes", {}, sum(p.proc.is_alive() for p in self.processes.values()))
        yield alive
        restarts = Metric(
            "embedder_process_restarts", "Server processes the supervisor started again.", "counter"
        )
        restarts.add_sample("embedder_process_restarts_total", {}, self.restarts)
        yield restarts


def run_processes(config: ServerConfig) -> int:
    """`serve` with `config.processes` > 1: reserve the ports, start, serve, drain (module docstring)."""
    started = time.monotonic()
    grpc_sock = reserve_port(config.host, config.port)
    http_sock = reserve_port(config.http_host, config.http_port) if config.http_port >= 0 else None
    supervisor = Supervisor(
        config, grpc_sock.getsockname()[1], http_sock.getsockname()[1] if http_sock else -1
    )
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, supervisor.on_signal)
    metrics_server = None
    try:
        if not supervisor.start_all():
            return supervisor.stop()
        metrics_port: int | None = None
        if config.metrics_port >= 0:
            metrics_server = _metrics_endpoint(config, supervisor)
            metrics_port = int(metrics_server.server_port)
        first = supervisor.processes[0].ready or {}
        # One token before "on port": scripts and tests read the ports from this line.
        log.info(
            "serving %s on port %d (metrics port %s, http port %s, %d processes x %d workers per model) "
            "after %.2fs; loaded: %s",
            first.get("default"),
            supervisor.port,
            metrics_port,
            supervisor.http_port if supervisor.http_port >= 0 else None,
            config.processes,
            first.get("workers", 0),
            time.monotonic() - started,
            first.get("loaded"),
        )
        return supervisor.run()
    finally:
        supervisor.stop()  # at once if it has already stopped
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        grpc_sock.close()
        if http_sock is not None:
            http_sock.close()


def _metrics_endpoint(config: ServerConfig, supervisor: Supervisor) -> Any:
    registry = CollectorRegistry()
    registry.register(supervisor)
    try:
        server, _ = start_http_server(config.metrics_port, addr=config.metrics_host, registry=registry)
    except OSError as exc:
        where = f"{config.metrics_host}:{config.metrics_port}"
        raise ConfigError(
            f"cannot bind the metrics endpoint to {where}: {exc.strerror or exc} "
            "(set metrics_port to a free port, 0 for any, or -1 for none)"
        ) from None
    return server
