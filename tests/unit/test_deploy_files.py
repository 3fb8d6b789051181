"""Static checks of the deployment files (there is no Docker engine or cluster here): the Dockerfile,
docker-compose.yml, deploy/k8s/ and the Grafana dashboard agree with the service config, the CLI and the
metrics the server exports. The same topology runs for real in tests/integration/test_deploy_topology.py.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from embedder.cli import build_parser
from embedder.config import ServerConfig, load_config
from embedder.metrics import Metrics
from tests.deploy_support import (
    DASHBOARD,
    DEPLOY,
    NGINX_CONF,
    PROMETHEUS_YML,
    REPO,
    alert_expressions,
    dashboard_expressions,
    queried_metric_names,
    sample_names,
)

DEFAULTS = ServerConfig()
Instruction = tuple[str, str]


def dockerfile_stages() -> dict[str, list[Instruction]]:
    """Stage name -> its instructions (upper-case keyword, raw arguments); continuations joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            name = re.search(r"\bAS\s+(\S+)", args, flags=re.IGNORECASE)
            assert name, f"unnamed stage: {line}"
            current = stages.setdefault(name.group(1), [])
        elif current is not None:
            current.append((keyword, args.strip()))
    return stages


def args_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [a for k, a in stage if k == keyword]


def expand_defaults(command: str) -> str:
    """`${NAME:-default}` -> default (what a shell in the image does when NAME is unset)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", command)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def health_argv_port(argv: list[str]) -> int:
    """The probe must be a valid `streamrec-embedder health` call; returns the port it probes."""
    assert argv[0] == "streamrec-embedder", argv
    args = build_parser().parse_args(argv[1:])
    assert args.command == "health"
    return port_of(args.address)


# --- Dockerfile --------------------------------------------------------------------------------------


def test_stages_serve_is_the_default_target() -> None:
    stages = dockerfile_stages()
    assert list(stages) == ["build", "train", "serve"]  # `docker build .` builds the last one


def test_serving_image_has_no_torch() -> None:
    stages = dockerfile_stages()
    serve = stages["serve"]
    copied_from = {m.group(1) for a in args_of(serve, "COPY") if (m := re.search(r"--from=(\S+)", a))}
    assert copied_from == {"build"}
    for name in ("serve", "build"):
        runs = " ".join(args_of(stages[name], "RUN"))
        assert "torch" not in runs and "[train" not in runs, f"stage {name} installs training deps"
    assert "'.[serve]'" in " ".join(args_of(stages["build"], "RUN"))
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any("torch" in dep for dep in extras["serve"])
    assert "torch==2.13.0" in " ".join(args_of(stages["train"], "RUN"))  # the pin pyproject.toml names


@pytest.mark.parametrize("stage", ["serve", "train"])
def test_runs_as_the_non_root_user_it_creates(stage: str) -> None:
    instructions = dockerfile_stages()[stage]
    user = args_of(instructions, "USER")[-1]
    uid = user.split(":")[0]
    assert uid not in ("root", "0")
    created = re.search(r"useradd .*--uid (\d+)", " ".join(args_of(instructions, "RUN")))
    assert created and created.group(1) == uid


def test_healthcheck_is_the_cli_health_probe() -> None:
    serve = dockerfile_stages()["serve"]
    (check,) = args_of(serve, "HEALTHCHECK")
    options, _, command = check.partition(" CMD ")
    argv = shlex.split(expand_defaults(command))
    assert health_argv_port(argv) == DEFAULTS.port
    timeout_s = float(re.search(r"--timeout=(\d+)s", options).group(1))  # type: ignore[union-attr]
    assert float(argv[argv.index("--timeout-s") + 1]) < timeout_s  # the probe gives up before Docker does


def test_entrypoint_env_and_ports_match_the_config() -> None:
    serve = dockerfile_stages()["serve"]
    argv = json.loads(args_of(serve, "ENTRYPOINT")[-1]) + json.loads(args_of(serve, "CMD")[-1])
    assert argv[0] == "streamrec-embedder" and build_parser().parse_args(argv[1:]).command == "serve"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args_of(serve, "ENV"))))
    ours = {k: v for k, v in env.items() if k.startswith("STREAMREC_EMBEDDER_")}
    config = load_config(env=ours)  # every name is a config field, every value parses
    assert config.bundle == "/app/models/" + Path(DEFAULTS.bundle).name
    exposed = {int(p) for a in args_of(serve, "EXPOSE") for p in a.split()}
    assert exposed == {config.port, config.metrics_port} == {DEFAULTS.port, DEFAULTS.metrics_port}


def dockerignored(path: str) -> bool:
    patterns = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pat)
        or fnmatch.fnmatch(prefix, pat.removeprefix("**/"))
        or fnmatch.fnmatch(Path(prefix).name, pat.removeprefix("**/"))
        for pat in patterns
        for prefix in prefixes
    )


def test_copied_sources_exist_and_are_in_the_build_context() -> None:
    for name, instructions in dockerfile_stages().items():
        for args in args_of(instructions, "COPY"):
            if "--from=" in args:
                continue
            *sources, _dest = args.split()
            for source in sources:
                assert not dockerignored(source.rstrip("/")), f"{name}: {source} is in .dockerignore"
                if source.rstrip("/") == DEFAULTS.bundle:
                    continue  # the default bundle: written by the training job, committed when done
                assert (REPO / source).exists(), f"{name}: COPY {source}: not in the repo"
    for heavy in (".venv", ".git", ".cache", "benchmarks/.cache", "runs"):
        assert dockerignored(heavy), f"{heavy} would be sent to the Docker daemon"


# --- docker-compose.yml, nginx, Prometheus, Grafana --------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def replicas(services: dict[str, Any]) -> dict[str, ServerConfig]:
    """Embedder services -> the config each one runs with (image defaults + its environment)."""
    found = {}
    for name, svc in services.items():
        if svc.get("build", {}).get("target") == "serve":
            env = {k: str(v) for k, v in svc.get("environment", {}).items()}
            found[name] = load_config(env=env)
    return found


def test_compose_replicas_and_their_health_checks() -> None:
    services = compose()["services"]
    configs = replicas(services)
    assert len(configs) >= 2
    for name, config in configs.items():
        svc = services[name]
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD" and health_argv_port(test[1:]) == config.port
        assert set(map(int, svc["expose"])) == {config.port, config.metrics_port}
        assert int(svc["stop_grace_period"].rstrip("s")) > config.grace_period_s
        # workers=0 would count the host's cores, not the container's CPU limit.
        assert config.workers == svc["cpus"]


def test_balancer_routes_to_every_replica() -> None:
    services = compose()["services"]
    configs = replicas(services)
    lb = services["lb"]
    assert {s: c["condition"] for s, c in lb["depends_on"].items()} == dict.fromkeys(
        configs, "service_healthy"
    )
    (mount,) = lb["volumes"]
    assert REPO / mount.split(":")[0] == NGINX_CONF
    text = NGINX_CONF.read_text()
    upstreams = re.findall(r"^\s*server\s+([^\s{]+)[^;{]*;", text, flags=re.MULTILINE)
    assert sorted(upstreams) == sorted(f"{n}:{c.port}" for n, c in configs.items())
    assert "grpc_pass grpc://embedders;" in text
    listen = int(re.search(r"listen\s+(\d+)\s+http2;", text).group(1))  # type: ignore[union-attr]
    assert f"{listen}:{listen}" in lb["ports"]
    max_body = int(re.search(r"client_max_body_size\s+(\d+)m;", text).group(1))  # type: ignore[union-attr]
    assert max_body * 1024 * 1024 == DEFAULTS.max_receive_message_bytes


def test_prometheus_scrapes_every_replica_and_grafana_reads_prometheus() -> None:
    services = compose()["services"]
    configs = replicas(services)
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    targets = [t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]]
    assert sorted(targets) == sorted(f"{n}:{c.metrics_port}" for n, c in configs.items())
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (ds,) = datasource["datasources"]
    assert ds["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    dashboards = {
        v.split(":")[1]: REPO / v.split(":")[0] for v in services["grafana"]["volumes"] if v[0] == "."
    }
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/streamrec.yml").read_text())
    assert dashboards[provider["providers"][0]["options"]["path"]] == DASHBOARD.parent
    assert dashboards["/etc/grafana/provisioning"] == DEPLOY / "grafana/provisioning"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert {t["datasource"]["uid"] for p in panels for t in p["targets"]} == {ds["uid"]}


def test_dashboard_shows_what_operators_need() -> None:
    exprs = "\n".join(dashboard_expressions())
    for needed in (
        r"rate\(streamrec_embedder_items_total",
        r"histogram_quantile\(0\.5, .*streamrec_embedder_request_latency_seconds_bucket",
        r"histogram_quantile\(0\.99, .*streamrec_embedder_request_latency_seconds_bucket",
        r"streamrec_embedder_batch_items_(sum|bucket)",
        r"streamrec_embedder_queue_items",
        r"sum by \(method, code\) \(rate\(streamrec_embedder_requests_total\{code!=\"OK\"\}",
    ):
        assert re.search(needed, exprs), needed


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    exported = sample_names(generate_latest(Metrics().registry).decode())
    used = queried_metric_names(dashboard_expressions() + alert_expressions())
    assert used and used <= exported, used - exported


# --- Kubernetes --------------------------------------------------------------------------------------


def k8s(kind: str) -> dict[str, Any]:
    docs = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    (found,) = [d for d in docs if d and d["kind"] == kind]
    return found


def test_k8s_deployment_probes_ports_and_user() -> None:
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    config = load_config(env={e["name"]: e["value"] for e in container["env"]})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.port
    assert build_parser().parse_args(container["args"]).command == "serve"
    assert spec["terminationGracePeriodSeconds"] > config.grace_period_s
    assert config.workers == int(container["resources"]["requests"]["cpu"])
    user = args_of(dockerfile_stages()["serve"], "USER")[-1].split(":")[0]
    assert spec["securityContext"]["runAsNonRoot"] and str(spec["securityContext"]["runAsUser"]) == user
    kustomization = yaml.safe_load((DEPLOY / "k8s/kustomization.yaml").read_text())
    assert all((DEPLOY / "k8s" / r).exists() for r in kustomization["resources"])
    assert (
        k8s("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"]
        == k8s("Deployment")["metadata"]["name"]
    )


def test_metrics_page_leaves_loopback_only_where_it_is_scraped_and_fenced() -> None:
    """/metrics is plaintext and unauthenticated: loopback by default (issue 14, defect 9). The image,
    the compose replicas and the pods open it to their network for Prometheus, say so explicitly, never
    publish it to the host, and on Kubernetes only the monitoring namespace may reach it."""
    assert DEFAULTS.metrics_host == "127.0.0.1"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args_of(dockerfile_stages()["serve"], "ENV"))))
    assert env["STREAMREC_EMBEDDER_METRICS_HOST"] == "0.0.0.0"
    services = compose()["services"]
    for name, config in replicas(services).items():
        assert config.metrics_host == "0.0.0.0", name
        assert "ports" not in services[name], f"{name} publishes a port to the host"
    (container,) = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    assert load_config(env={e["name"]: e["value"] for e in container["env"]}).metrics_host == "0.0.0.0"
    policy = k8s("NetworkPolicy")["spec"]
    assert policy["podSelector"] == k8s("Deployment")["spec"]["selector"]
    rules = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert set(rules) == {"grpc", "metrics"}
    assert "from" not in rules["grpc"]  # the API: keys and TLS guard it, not the network
    (source,) = rules["metrics"]["from"]
    assert set(source) == {"namespaceSelector"}
    kustomization = yaml.safe_load((DEPLOY / "k8s/kustomization.yaml").read_text())
    assert "networkpolicy.yaml" in kustomization["resources"]
