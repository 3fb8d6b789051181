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
  labelled `process="0".."N-1"`, plus its own `processes` and `process_restarts_total`;
- SIGHUP goes to every serving process (one still loading gets it once it serves); a ReloadModels call,
  which one process takes, is passed to the others;
- a process that dies is started again, after 1 s and twice as long after each exit within a minute of
  its start (at most 30 s); SIGTERM/SIGINT drains every process (each as a single server drains:
  docs/operations.md) and exits 0 once they have.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from prometheus_client import CollectorRegistry, Metric, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from embedder.config import ServerConfig
from embedder.errors import ConfigError, EmbedderError
from embedder.grpc.server import RunningServer, metrics_bind_error, serve
from embedder.malloc import MallocTrimmer, tune_malloc
from embedder.metrics import PREFIX

log = logging.getLogger(__name__)

_POLL_S = 0.2
# A process that exits is started again after this, doubled for every exit within _STABLE_S of its start.
_RESTART_DELAY_S = 1.0
_MAX_RESTART_DELAY_S = 30.0
_STABLE_S = 60.0
# After the drain's grace period, how long the processes still get to exit before they are killed.
_EXIT_SLACK_S = 15.0
_SCRAPE_TIMEOUT_S = 2.0


def reserve_port(host: str, port: int, *, dual_stack: bool) -> list[socket.socket]:
    """Bound (not listening) SO_REUSEPORT sockets on every address `host` resolves to, at `port` (0 = a
    port free on all of them), held by the supervisor for its lifetime so that the port stays ours while
    processes come and go. A port another server holds is a `ConfigError`: a socket of its own without
    SO_REUSEPORT cannot bind beside it, and an SO_REUSEPORT one would silently take a share of its
    connections. `dual_stack`: an IPv6 wildcard takes IPv4 too (gRPC's socket does; asyncio's not)."""
    where = f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ConfigError(f"cannot bind {where}: {exc.strerror or exc}") from None
    held: list[socket.socket] = []
    try:
        for family, resolved in dict.fromkeys((a[0], a[4]) for a in addresses):
            # Port 0: the port the first address got, on the others too.
            address = (resolved[0], port or (held[0].getsockname()[1] if held else 0), *resolved[2:])
            if address[1]:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    _options(probe, dual_stack, reuse_port=False)
                    probe.bind(address)
            sock = socket.socket(family, socket.SOCK_STREAM)
            held.append(sock)
            _options(sock, dual_stack, reuse_port=True)
            sock.bind(address)
    except OSError as exc:
        for sock in held:
            sock.close()
        raise ConfigError(f"cannot bind {where}: {exc.strerror or exc}") from None
    return held


def _options(sock: socket.socket, dual_stack: bool, reuse_port: bool) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


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


def _die_with_parent(supervisor_pid: int) -> None:
    """SIGTERM this process when the supervisor dies, even by SIGKILL (Linux; elsewhere a no-op): no
    process is left serving on the port without it. A supervisor that died before this ran (the spawn
    took seconds) is seen at once: this process then has another parent, and exits."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != supervisor_pid:
        sys.exit(0)


def _process_main(config: ServerConfig, index: int, conn: Connection, supervisor_pid: int) -> None:
    """One server process: serve until SIGTERM; tell the supervisor when ready, and of ReloadModels."""
    # Until `serve` takes them over once loaded: Ctrl-C (sent to the terminal's whole group) is the
    # supervisor's to act on, and a reload cannot concern a process still loading what there is now.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with_parent(supervisor_pid)
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [process {index}] %(name)s: %(message)s",
    )

    def ready(running: RunningServer, start_s: float) -> None:
        facts = {
            "default": running.registry.resolve("").key,
            "loaded": running.registry.describe(),
            "metrics_port": running.metrics_port,
            "workers": running.engine.workers,
            "start_s": start_s,
        }
        conn.send(("ready", facts))

    try:
        serve_process(
            config, reuse_port=True, on_ready=ready, after_reload=lambda: conn.send(("reload", index))
        )
    except EmbedderError as exc:
        conn.send(("error", str(exc)))
        sys.exit(1)


def serve_process(
    config: ServerConfig,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[RunningServer, float], None] | None = None,
    after_reload: Callable[[], None] | None = None,
) -> None:
    """Be one server process until SIGTERM (`serve`, or one of `serve --processes N`'s): glibc's malloc
    tuned before the server's threads allocate, and trimmed after bursts while it serves."""
    tune_malloc(config.malloc_arenas)
    trimmer = MallocTrimmer(config.malloc_trim_free_mb).start()
    try:
        asyncio.run(serve(config, reuse_port=reuse_port, on_ready=on_ready, after_reload=after_reload))
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
    reload_pending: bool = False  # a reload asked for while it was loading: sent once it serves
    restart_at: float | None = None  # when it exited: when it is started again


@dataclass(eq=False)  # hashable: prometheus_client's registry keys its collectors
class Supervisor:
    """Starts, watches and stops the processes of one `serve --processes N`."""

    config: ServerConfig
    port: int
    http_port: int
    processes: dict[int, _Process] = field(default_factory=dict)
    restarts: int = 0
    _signals: list[int] = field(default_factory=list)
    _delays: dict[int, float] = field(default_factory=dict)
    _stopped: bool = False
    _exit_code: int = 0
    _context: Any = field(default_factory=lambda: multiprocessing.get_context("spawn"))

    def start(self, index: int, again: bool = False) -> _Process:
        ours, theirs = self._context.Pipe()
        config = process_config(self.config, index, self.port, self.http_port)
        proc = self._context.Process(
            target=_process_main,
            args=(config, index, theirs, os.getpid()),
            name=f"streamrec-embedder-{index}",
        )
        proc.start()
        theirs.close()
        self.processes[index] = _Process(index, proc, ours, time.monotonic(), again)
        return self.processes[index]

    @property
    def stopping(self) -> bool:
        return any(s != signal.SIGHUP for s in self._signals)

    def start_all(self) -> bool:
        """One after another (their loads do not compete). False if told to stop meanwhile; a process
        that fails (or one started before it that exits) stops start-up with its one-line reason."""
        for index in range(self.config.processes):
            p = self.start(index)
            while p.ready is None:
                self._poll()
                if self.stopping:
                    return False
                for q in self.processes.values():
                    if not q.proc.is_alive():
                        self._drain_messages(q)
                        if q.error:
                            raise ConfigError(q.error)
                        raise ConfigError(
                            f"server process {q.index} exited with {q.proc.exitcode} during start-up"
                        )
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
            if p.reload_pending:
                p.reload_pending = False
                self._signal(p, signal.SIGHUP)
        elif kind == "error":
            p.error = body
        elif kind == "reload":  # ReloadModels reached process `body`: the others reload too
            self.reload_all(but=body)

    def _poll(self) -> None:
        """Wait up to _POLL_S for a message or an exit of a live process, and handle the messages."""
        live = [p for p in self.processes.values() if p.restart_at is None]
        waitables: list[Any] = [p.conn for p in live] + [p.proc.sentinel for p in live]
        for ready in wait(waitables, timeout=_POLL_S):
            for p in live:
                if ready is p.conn:
                    self._drain_messages(p)

    def _signal(self, p: _Process, sig: int) -> None:
        if p.proc.is_alive() and p.proc.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.proc.pid, sig)

    def reload_all(self, but: int = -1) -> None:
        """SIGHUP to every serving process but `but`; one still loading gets it once it serves."""
        for p in self.processes.values():
            if p.index == but:
                continue
            if p.ready is None:
                p.reload_pending = True
            else:
                self._signal(p, signal.SIGHUP)

    def on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT: pass SIGHUP on, start again processes that exit; then drain all."""
        while True:
            self._poll()
            while self._signals:
                if self._signals.pop(0) != signal.SIGHUP:
                    return self.stop()
                log.info("SIGHUP: every process reloads its models")
                self.reload_all()
            now = time.monotonic()
            for p in list(self.processes.values()):
                if p.restart_at is None and not p.proc.is_alive():
                    self._exited(p, now)
                elif p.restart_at is not None and now >= p.restart_at:
                    self.restarts += 1
                    self.start(p.index, again=True)

    def _exited(self, p: _Process, now: float) -> None:
        """A process exited while serving: start it again later (longer if it keeps exiting early)."""
        self._drain_messages(p)
        p.conn.close()
        early = now - p.started < _STABLE_S
        delay = min(2 * self._delays.get(p.index, 0.0), _MAX_RESTART_DELAY_S) if early else 0.0
        delay = max(delay, _RESTART_DELAY_S)
        self._delays[p.index] = delay
        p.restart_at = now + delay
        reason = f" ({p.error})" if p.error else ""
        log.warning(
            "server process %d exited with %s%s; starting it again in %.0fs",
            p.index,
            p.proc.exitcode,
            reason,
            delay,
        )

    def stop(self) -> int:
        """SIGTERM to every process (each drains: NOT_SERVING, refusals, grace), wait, kill leftovers.
        Exit code 0 if every process that was serving drained and exited 0."""
        if self._stopped:
            return self._exit_code
        self._stopped = True
        draining = [p for p in self.processes.values() if p.proc.is_alive()]
        if draining:
            log.info("draining %d server processes", len(draining))
        for p in draining:
            self._signal(p, signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace_period_s + _EXIT_SLACK_S
        for p in draining:
            p.proc.join(max(0.0, deadline - time.monotonic()))
            if p.proc.is_alive():
                log.warning("server process %d did not exit in time; killing it", p.index)
                p.proc.kill()
                p.proc.join()
        codes = [p.proc.exitcode for p in draining]
        if draining:
            log.info("stopped; server processes exited with %s", codes)
        # A process still loading when the stop came is ended by the signal (it had nothing to drain).
        self._exit_code = 0 if all(p.proc.exitcode == 0 for p in draining if p.ready) else 1
        return self._exit_code

    # -- /metrics: every process's page, labelled ---------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for p in self.processes.values():
            port = (p.ready or {}).get("metrics_port")
            if not port or p.restart_at is not None or not p.proc.is_alive():
                continue
            try:
                with urllib.request.urlopen(  # our own process, on loopback
                    f"http://127.0.0.1:{port}/metrics", timeout=_SCRAPE_TIMEOUT_S
                ) as page:
                    parsed = list(text_string_to_metric_families(page.read().decode("utf-8")))
            except Exception as exc:  # one process's page (exiting, restarting) never fails the scrape
                log.warning("cannot read process %d's metrics: %s", p.index, exc)
                continue
            for family in parsed:
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type, family.unit)
                )
                merged.samples += [
                    Sample(s.name, {**s.labels, "process": str(p.index)}, s.value, s.timestamp, s.exemplar)
                    for s in family.samples
                ]
        yield from families.values()
        alive = Metric(PREFIX + "processes", "Server processes serving under the supervisor.", "gauge")
        serving = sum(p.ready is not None and p.proc.is_alive() for p in self.processes.values())
        alive.add_sample(PREFIX + "processes", {}, serving)
        yield alive
        restarts = Metric(
            PREFIX + "process_restarts", "Server processes the supervisor started again.", "counter"
        )
        restarts.add_sample(PREFIX + "process_restarts_total", {}, self.restarts)
        yield restarts


def run_processes(config: ServerConfig) -> int:
    """`serve` with `config.processes` > 1: reserve the ports, start, serve, drain (module docstring)."""
    started = time.monotonic()
    held = reserve_port(config.host, config.port, dual_stack=True)
    try:
        if config.http_port >= 0:  # asyncio binds an IPv6 wildcard for IPv6 only
            held += reserve_port(config.http_host, config.http_port, dual_stack=False)
    except ConfigError:
        for sock in held:
            sock.close()
        raise
    http_port = held[-1].getsockname()[1] if config.http_port >= 0 else -1
    supervisor = Supervisor(config, held[0].getsockname()[1], http_port)
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
        for sock in held:
            sock.close()


def _metrics_endpoint(config: ServerConfig, supervisor: Supervisor) -> Any:
    registry = CollectorRegistry()
    registry.register(supervisor)
    try:
        server, _ = start_http_server(config.metrics_port, addr=config.metrics_host, registry=registry)
    except OSError as exc:
        raise metrics_bind_error(config, exc) from None
    return server
