"""`serve --processes 2`: two real server processes on one real port under a supervisor.

What a user of it relies on: connections (the project's client's too, with several per address) spread
over both processes and every one answers the same vectors; one /metrics page holds both processes'
series, labelled; a ReloadModels call taken by one process reloads both; a killed process is started
again while the other keeps serving; SIGTERM drains both and exits 0; a port another server holds is a
one-line error, not a silent share of its traffic.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import urllib.request
from collections import defaultdict

import grpc
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from embedder.client import ClientOptions, EmbedderClient
from embedder.core.bundle import Bundle
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc
from tests.hardening import run_cli, server_process, wait_until

TEXTS = ["a red bicycle for city rides", "wireless headphones with noise cancelling"]
# Connections opened: the kernel hashes each to a process; all 32 on one of two has odds 2^-31.
CONNECTIONS = 32


def _metrics(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def _embed_ok_by_process(port: int) -> dict[str, float]:
    series = _metrics(port)["streamrec_embedder_requests_total"]
    by: dict[str, float] = defaultdict(float)
    for labels, value in series.items():
        d = dict(labels)
        if d["method"] == "Embed" and d["code"] == "OK":
            by[d["process"]] += value
    return dict(by)


def _embed_on_new_connections(port: int, n: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        # A channel of its own, with its own connection (no subchannel shared through gRPC's pool).
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            stub = pb_grpc.EmbedderStub(channel)  # type: ignore[no-untyped-call]
            reply = stub.Embed(pb.EmbedRequest(texts=TEXTS), timeout=30)
            out.append(np.frombuffer(reply.embeddings, np.float32).reshape(reply.count, reply.dim))
    return out


def _children(pid: int) -> list[psutil.Process]:
    """The supervisor's server processes (not multiprocessing's resource tracker)."""
    return [c for c in psutil.Process(pid).children() if "spawn_main" in " ".join(c.cmdline())]


def test_two_processes_share_the_port_answer_alike_and_report_on_one_page(bundle: Bundle) -> None:
    flags = ("--processes", "2", "--workers", "1", "--metrics-port", "0", "--grace-period-s", "2")
    # Two interpreters load the model one after the other: on a loaded 2-core machine that takes a while.
    with server_process(bundle, *flags, timeout_s=180) as (proc, port, lines):
        ready = next(line for line in lines if " on port " in line)
        assert "2 processes x 1 workers per model" in ready, ready
        metrics_port = int(re.search(r"metrics port (\d+)", ready).group(1))  # type: ignore[union-attr]
        assert len(_children(proc.pid)) == 2

        vectors = _embed_on_new_connections(port, CONNECTIONS)
        for v in vectors[1:]:
            assert np.array_equal(v, vectors[0])  # bit for bit, whichever process answered
        served = _embed_ok_by_process(metrics_port)
        assert set(served) == {"0", "1"} and all(n > 0 for n in served.values()), served
        assert sum(served.values()) == CONNECTIONS
        # The project's client, several connections to the one address: its calls reach both too.
        options = ClientOptions(connections_per_address=CONNECTIONS // 2)
        with EmbedderClient(f"127.0.0.1:{port}", options) as client:
            for _ in range(CONNECTIONS // 2):
                assert np.array_equal(client.embed(TEXTS), vectors[0])
        by_client = _embed_ok_by_process(metrics_port)
        assert all(by_client[p] > served[p] for p in ("0", "1")), (served, by_client)
        page = _metrics(metrics_port)
        assert page["streamrec_embedder_processes"][()] == 2
        assert page["streamrec_embedder_process_restarts_total"][()] == 0

        # ReloadModels reaches one process; the supervisor passes it to the other.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmbedderStub(channel)  # type: ignore[no-untyped-call]
            stub.ReloadModels(pb.ReloadModelsRequest(), timeout=30)
        for index in (0, 1):
            wait_until(
                lambda i=index: any(f"[process {i}]" in x and "reload:" in x for x in list(lines)),
                30,
                f"process {index} to reload",
            )

        # A process that dies is started again; the other serves meanwhile.
        victim = _children(proc.pid)[0]
        victim.kill()
        victim.wait(10)
        assert _embed_on_new_connections(port, 4)  # every call answered: by the survivor or the new one
        wait_until(lambda: len(_children(proc.pid)) == 2, 60, "the process to be started again")
        wait_until(lambda: any("serving again" in x for x in list(lines)), 60, "the new process to serve")
        assert _metrics(metrics_port)["streamrec_embedder_process_restarts_total"][()] == 1

        children = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, "".join(lines)
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
        assert sum("stopped; requests served" in x for x in lines) == 2, "".join(lines)


def test_a_port_another_server_holds_is_a_one_line_error(bundle: Bundle) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        code, stderr, _, _ = run_cli(
            "serve", "--bundle", str(bundle.path), "--processes", "2", "--host", "127.0.0.1",
            "--port", str(port), "--metrics-port", "-1",
        )  # fmt: skip
    assert code == 1
    assert stderr == [f"streamrec-embedder: error: cannot bind 127.0.0.1:{port}: Address already in use"]


def test_a_bad_bundle_stops_start_up_with_its_one_line_reason(tmp_path: os.PathLike[str]) -> None:
    code, stderr, _, _ = run_cli(
        "serve", "--bundle", str(tmp_path), "--processes", "2", "--port", "0", "--metrics-port", "-1"
    )
    assert code == 1
    assert len(stderr) == 1 and stderr[0].startswith("streamrec-embedder: error: "), stderr
