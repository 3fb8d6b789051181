"""docker-compose.yml's topology, run natively (no Docker engine here): two `streamrec-embedder serve`
processes, nginx balancing gRPC over them with deploy/nginx/nginx.conf, and a real Prometheus scraping
both with deploy/prometheus/prometheus.yml (+ alerts.yml), all on loopback. The files are run as
committed except for addresses, ports, paths and a 1 s scrape interval (tests/deploy_support.py).

nginx and Prometheus come from Debian packages: scripts/install_system_deps.sh, which .ci/run calls; without
them these tests skip (fail under CI=true).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedder.cli import main
from embedder.client import ClientOptions, EmbedderClient
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine
from tests.deploy_support import (
    PROMETHEUS_YML,
    Proc,
    alert_expressions,
    dashboard_expressions,
    exported_sample_names,
    items_served,
    processes,
    prometheus_api,
    queried_metric_names,
    require_tool,
    start_nginx,
    start_prometheus,
    start_server,
    wait_until,
)
from tests.support import sample_texts

pytestmark = [pytest.mark.requires_nginx, pytest.mark.requires_prometheus]

JOB = 'job="streamrec-embedder"'
CALLERS, CALLS, TEXTS = 4, 12, 16


@dataclass
class Topology:
    replicas: list[Proc]
    lb: Proc
    prometheus: Proc
    sent: int  # texts embedded through the balancer by the fixture
    served: list[float]  # each replica's items_total right after


def up_targets(prometheus: Proc) -> dict[str, float]:
    result = prometheus_api(prometheus, "query", query=f"up{{{JOB}}}")["result"]
    return {r["metric"]["instance"]: float(r["value"][1]) for r in result}


def send_load(address: str) -> int:
    """CALLERS threads, each CALLS calls of TEXTS texts, through the balancer; one bad call for the
    errors-by-code panel. Returns the texts embedded."""
    texts = sample_texts(TEXTS * CALLS, seed=31)
    errors: list[BaseException] = []

    def caller(client: EmbedderClient) -> None:
        try:
            for i in range(CALLS):
                client.embed(texts[i * TEXTS : (i + 1) * TEXTS])
        except BaseException as exc:
            errors.append(exc)

    with EmbedderClient([address], ClientOptions(timeout_s=30)) as client:
        threads = [threading.Thread(target=caller, args=(client,)) for _ in range(CALLERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors[0]
    with EmbedderClient([address], ClientOptions(dimensions=7)) as bad, pytest.raises(grpc.RpcError) as info:
        bad.embed(["not a Matryoshka size"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return CALLERS * CALLS * TEXTS


@pytest.fixture(scope="module")
def topology(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    require_tool("nginx")
    require_tool("prometheus")
    work = tmp_path_factory.mktemp("topology")
    with processes() as started:
        for name in ("embedder-1", "embedder-2"):
            started.append(start_server(bundle.path, work / f"{name}.log", "--workers", "1"))
        replicas = list(started)
        (work / "nginx").mkdir()
        started.append(lb := start_nginx([r.address for r in replicas], work / "nginx"))
        (work / "prometheus").mkdir()
        targets = [f"127.0.0.1:{r.metrics_port}" for r in replicas]
        started.append(prometheus := start_prometheus(targets, work / "prometheus", interval="1s"))
        # A scrape before the load, so rate() has a sample from before it.
        wait_until(lambda: up_targets(prometheus) == dict.fromkeys(targets, 1.0), 30, "both targets up")
        sent = send_load(lb.address)
        yield Topology(replicas, lb, prometheus, sent, [items_served(r) for r in replicas])


def test_health_and_embeddings_through_the_balancer(topology: Topology, reference: EmbeddingEngine) -> None:
    assert main(["health", "--address", topology.lb.address]) == 0
    texts = sample_texts(40, seed=32)
    with EmbedderClient([topology.lb.address]) as client:
        np.testing.assert_allclose(client.embed(texts), reference.embed_in_process(texts), atol=1e-5)


def test_both_replicas_served_the_load(topology: Topology) -> None:
    assert all(served > 0 for served in topology.served), topology.served
    assert sum(topology.served) == topology.sent  # nothing lost, nothing served twice


def test_prometheus_scrapes_both_replicas(topology: Topology) -> None:
    prometheus = topology.prometheus
    targets = {f"127.0.0.1:{r.metrics_port}" for r in topology.replicas}
    assert set(up_targets(prometheus)) == targets

    def items(query: str) -> float:
        result = prometheus_api(prometheus, "query", query=query)["result"]
        return float(result[0]["value"][1]) if result else 0.0

    wait_until(
        lambda: items(f"sum(rate(streamrec_embedder_items_total{{{JOB}}}[30s]))") > 0, 20, "items rate"
    )
    # Prometheus holds what the replicas counted: at least what the fixture sent (later tests add more).
    at_least = topology.sent
    wait_until(lambda: items("sum(streamrec_embedder_items_total)") >= at_least, 20, "all items scraped")


def test_every_dashboard_query_runs_on_live_data(topology: Topology) -> None:
    # Errors by code has the fixture's INVALID_ARGUMENT; dropped texts and failed batches stay empty.
    may_be_empty = ("dropped_items_total", "failed_batches_total")
    for expr in dashboard_expressions():
        query = expr.replace("$__rate_interval", "30s")
        result = wait_until(
            lambda q=query: (
                prometheus_api(topology.prometheus, "query", query=q)["result"]
                or any(m in q for m in may_be_empty)
            ),
            20,
            f"data for {query}",
        )
        assert result, query


def test_every_queried_metric_exists_on_a_live_metrics_page(topology: Topology) -> None:
    exported = exported_sample_names(topology.replicas[0].metrics_url)
    used = queried_metric_names(dashboard_expressions() + alert_expressions())
    assert used <= exported, used - exported


def test_alert_rules_load_and_evaluate(topology: Topology) -> None:
    def rules() -> list[dict[str, object]]:
        groups = prometheus_api(topology.prometheus, "rules")["groups"]
        found = [r for g in groups for r in g["rules"]]
        return found if found and all(r.get("lastEvaluation", "0001").startswith("2") for r in found) else []

    found = wait_until(rules, 20, "alert rules to be evaluated")
    assert len(found) == len(alert_expressions())
    assert all(r["health"] == "ok" for r in found), found
    assert all(r["state"] == "inactive" for r in found), found


@pytest.mark.parametrize("config", [PROMETHEUS_YML, "rendered"])
def test_promtool_accepts_the_config(topology: Topology, config: Path | str) -> None:
    path = topology.prometheus.log.parent / "prometheus.yml" if config == "rendered" else config
    check = subprocess.run(
        [require_tool("promtool"), "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_dead_replica_is_down_in_prometheus_and_skipped_by_the_balancer(topology: Topology) -> None:
    """Last in this module: it kills a replica."""
    dead, alive = topology.replicas
    alive_before = items_served(alive)
    dead.kill()
    wait_until(
        lambda: up_targets(topology.prometheus).get(f"127.0.0.1:{dead.metrics_port}") == 0.0, 20, "up == 0"
    )
    texts = sample_texts(16, seed=33)
    with EmbedderClient([topology.lb.address], ClientOptions(timeout_s=30, backoff_initial_s=0.01)) as client:
        for _ in range(10):
            assert client.embed(texts).shape == (16, 384)
    assert items_served(alive) - alive_before == 160
