"""Helpers for the deployment tests: real `streamrec-embedder serve` subprocesses, nginx and Prometheus
run natively from the repo's deploy/ files (rendered with loopback addresses), and /metrics scraping.

The rendering swaps only addresses, ports and process-local paths; anything else in deploy/ is run as
committed, and a rendering step that finds nothing to swap fails, so the files and the tests cannot drift.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.prereqs import system_tool

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
NGINX_CONF = DEPLOY / "nginx" / "nginx.conf"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamrec-embedder.json"
_SERVING_LINE = re.compile(r"serving \S+ on port (\d+) \(metrics port (\d+)")


def require_tool(name: str) -> str:
    """Path of a system binary the deployment tests run (their `requires_*` markers skip without it)."""
    found = system_tool(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/install_system_deps.sh (as .ci/run does)")
    return found


def free_port() -> int:
    """A loopback port free right now, for programs that cannot bind port 0 and report it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout_s: float, what: str, every_s: float = 0.1) -> Any:
    """Poll `predicate()` until it returns something truthy; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@dataclass
class Proc:
    """A started program, its log file, and (for embedder servers) the ports it bound."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, as when a node dies."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _clean_env() -> dict[str, str]:
    """The test's environment without STREAMREC_EMBEDDER_* (a developer's shell must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_EMBEDDER_")}


def start_server(bundle: Path, log: Path, *flags: str) -> Proc:
    """`streamrec-embedder serve` on loopback port 0 (gRPC and metrics); the ports come from its log."""
    cmd = [sys.executable, "-m", "embedder.cli", "serve", "--bundle", str(bundle), "--host", "127.0.0.1"]
    cmd += ["--port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0", *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=_clean_env())
    server = Proc(log.stem, proc, log)

    def serving() -> re.Match[str] | None:
        server.check_alive()
        return _SERVING_LINE.search(log.read_text(errors="replace"))

    found = wait_until(serving, 90, f"{log.stem} to log that it is serving")
    server.port, server.metrics_port = int(found.group(1)), int(found.group(2))
    return server


@contextmanager
def processes() -> Iterator[list[Proc]]:
    """Collects started programs and stops every one of them, whatever happens."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()


def scrape(url: str) -> dict[str, float]:
    """A /metrics page as {sample name{sorted labels}: value}, parsed by prometheus_client's parser."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def exported_sample_names(url: str) -> set[str]:
    """Every sample name a live /metrics page can produce (see `sample_names`)."""
    return sample_names(urllib.request.urlopen(url, timeout=10).read().decode())


def sample_names(exposition: str) -> set[str]:
    """Sample names of a Prometheus text page, counting families with no sample yet (a labelled counter
    nobody incremented): counters give `_total`, histograms `_bucket`/`_sum`/`_count`."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def queried_metric_names(expressions: list[str]) -> set[str]:
    """Our metric names (`streamrec_embedder_*`) used in PromQL expressions."""
    return {m for e in expressions for m in re.findall(r"\bstreamrec_embedder_[a-z0-9_]+", e)}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS_YML.parent / "alerts.yml").read_text())
    return [r["expr"] for group in rules["groups"] for r in group["rules"]]


def items_served(server: Proc) -> float:
    """Texts embedded by `server`, over every model it serves."""
    found = scrape(server.metrics_url)
    return sum(v for k, v in found.items() if k.startswith("streamrec_embedder_items_total{"))


# --- nginx -------------------------------------------------------------------------------------------


def render_nginx(upstreams: list[str], listen_port: int, workdir: Path) -> str:
    """deploy/nginx/nginx.conf with loopback upstreams and listen port, and temp paths under `workdir`."""
    text = NGINX_CONF.read_text()
    servers = re.findall(r"^(\s*server\s+)(\S+)(.*;)$", text, flags=re.MULTILINE)
    if len(servers) != len(upstreams):
        raise AssertionError(
            f"nginx.conf has {len(servers)} upstream servers, the test runs {len(upstreams)}"
        )
    for (lead, address, rest), new in zip(servers, upstreams, strict=True):
        text = text.replace(f"{lead}{address}{rest}", f"{lead}{new}{rest}", 1)
    text, listens = re.subn(r"listen\s+\d+\s+http2;", f"listen 127.0.0.1:{listen_port} http2;", text)
    if listens != 1:
        raise AssertionError(f"nginx.conf should have one `listen <port> http2;`, found {listens}")
    # The compiled-in temp dirs (/var/lib/nginx/...) need root; these are process-local.
    temp = "".join(
        f"    {kind}_temp_path {workdir / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return text.replace("http {\n", "http {\n" + temp, 1)


def start_nginx(upstreams: list[str], workdir: Path) -> Proc:
    """nginx in the foreground with the rendered config; pid file and logs in `workdir`."""
    nginx = require_tool("nginx")
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(render_nginx(upstreams, port, workdir))
    directives = f"daemon off; pid {workdir / 'nginx.pid'};" + (" user root;" if os.geteuid() == 0 else "")
    cmd = [nginx, "-p", f"{workdir}/", "-c", str(conf), "-e", "stderr", "-g", directives]
    check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}"
    log = workdir / "nginx.log"
    with log.open("wb") as out:
        proc = Proc("nginx", subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), log, port=port)
    wait_until(lambda: _accepts(port, proc), 20, "nginx to listen")
    return proc


def _accepts(port: int, proc: Proc) -> bool:
    proc.check_alive()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --- Prometheus --------------------------------------------------------------------------------------


def render_prometheus(targets: list[str], interval: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with loopback targets, a short interval, absolute rule paths."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    if len(static["targets"]) != len(targets):
        raise AssertionError(
            f"prometheus.yml scrapes {len(static['targets'])} targets, test runs {len(targets)}"
        )
    static["targets"] = targets
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = [str(PROMETHEUS_YML.parent / f) for f in config.get("rule_files", [])]
    return config


def start_prometheus(targets: list[str], workdir: Path, interval: str = "1s") -> Proc:
    prometheus = require_tool("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(render_prometheus(targets, interval)))
    port = free_port()
    cmd = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = Proc("prometheus", subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT), log, port=port)
    wait_until(lambda: _ready(proc), 60, "Prometheus to be ready", every_s=0.25)
    return proc


def _ready(proc: Proc) -> bool:
    proc.check_alive()
    try:
        return bool(urllib.request.urlopen(f"http://{proc.address}/-/ready", timeout=2).status == 200)
    except OSError:
        return False


def prometheus_api(proc: Proc, path: str, **params: str) -> Any:
    """GET /api/v1/<path>; returns `data`, asserting the query itself succeeded."""
    url = f"http://{proc.address}/api/v1/{path}?" + urllib.parse.urlencode(params)
    try:
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as exc:  # a bad query is HTTP 400 with the reason in the JSON body
        body = json.loads(exc.read())
    assert body["status"] == "success", f"{params}: {body}"
    return body["data"]
