"""Mixed attack (issue 14, "Targets"): normal keyed callers keep their latency while anonymous clients
flood health Watch streams and keyed callers flood long texts with short deadlines.

    streamrec-bench mixed-attack [--bundle DIR] [--seconds 60] [--baseline-seconds 10] [--processes 1]
        [--out FILE.json]

One `streamrec-embedder serve` subprocess on loopback (an API key from the environment, one worker per
core; `--processes N`: N server processes on the port, every kind of caller then on 4 connections per
process). Phases:
1. unloaded: NORMAL_CALLERS keyed callers, 1-8 short texts per call, closed loop: their p50/p99;
2. attack, `--seconds` long: the same callers, plus WATCHERS anonymous Watch streams held open (and
   reopened when refused), plus LONG_CALLERS keyed callers sending 512 texts of 20,000 characters with
   0.5 s deadlines, plus a health Check every 100 ms;
3. after: the server's RSS once the attack's work is done (the server idle, at most 15 s after the
   attackers stopped; then 2 s of normal calls), against its RSS before, both net of the embedding
   cache's charged size (bounded by `embedding_cache_mb`, kept by design).
Targets: normal p99 under attack <= 3x unloaded; RSS after <= 1.2x before; every health Check answered
SERVING. Reported, with a verdict each; the exit code is 0 either way (the machine may be shared).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.loadgen import connections_for, rss_mb, stubs, wait_idle
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc

KEY = "mixed-attack-key"
NORMAL_CALLERS = 4
WATCHERS = 2000
LONG_CALLERS = 2
LONG_DEADLINE_S = 0.5
TARGET_P99_RATIO = 3.0
TARGET_RSS_GROWTH = 0.20
_WORDS = ["stream", "music", "playlist", "jazz", "rock", "live", "album", "track", "artist", "remix"]


@dataclass
class Tally:
    """What one kind of caller saw: status counts and (for normal calls) latencies in seconds."""

    codes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"codes": dict(self.codes)}
        if self.latencies:
            ordered = sorted(self.latencies)
            out["calls"] = len(ordered)
            out["p50_ms"] = round(1e3 * statistics.median(ordered), 2)
            out["p99_ms"] = round(1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2)
        return out


@dataclass
class Server:
    proc: subprocess.Popen[str]
    address: str
    metrics_url: str

    def rss_mib(self) -> float:
        """The server's RSS: its processes' summed, when it has several."""
        return rss_mb(self.proc.pid)

    def cache_mib(self) -> float:
        """What the embedding cache's entries are charged now: memory the server keeps by design,
        bounded by `embedding_cache_mb` (the attack's texts fill it like any others)."""
        body = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        found = re.findall(r"^streamrec_embedder_cache_bytes(?:\{[^}]*\})? (\S+)$", body, re.MULTILINE)
        return sum(float(v) for v in found) / 2**20


def start_server(bundle: str, processes: int = 1) -> Server:
    """The server (its default settings, `processes` processes) as a subprocess on free loopback ports
    (read from its log)."""
    cmd = [sys.executable, "-m", "embedder.cli", "serve", "--bundle", bundle, "--host", "127.0.0.1"]
    cmd += ["--port", "0", "--metrics-port", "0", "--metrics-host", "127.0.0.1"]
    cmd += ["--processes", str(processes)]
    env = {**os.environ, "STREAMREC_EMBEDDER_API_KEYS": KEY}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    assert proc.stderr is not None
    metrics_port = None
    for line in proc.stderr:
        if found := re.search(r"metrics port (\d+)", line):
            metrics_port = int(found.group(1))
        if "serving" in line and " on port " in line and metrics_port is not None:
            port = int(line.split(" on port ")[1].split()[0])
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
            return Server(proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics")
    raise RuntimeError(f"server exited with {proc.wait()} before serving")


async def normal_caller(stub: pb_grpc.EmbedderStub, until: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    metadata = (("authorization", f"Bearer {KEY}"),)
    while time.monotonic() < until:
        texts = [" ".join(rng.choices(_WORDS, k=rng.randint(3, 20))) for _ in range(rng.randint(1, 8))]
        started = time.perf_counter()
        try:
            await stub.Embed(pb.EmbedRequest(texts=texts), timeout=30, metadata=metadata)
            tally.latencies.append(time.perf_counter() - started)
            tally.codes["OK"] += 1
        except grpc.RpcError as exc:
            tally.codes[exc.code().name] += 1  # type: ignore[attr-defined]


async def long_caller(
    stub: pb_grpc.EmbedderStub, request: pb.EmbedRequest, until: float, tally: Tally
) -> None:
    metadata = (("authorization", f"Bearer {KEY}"),)
    while time.monotonic() < until:
        try:
            await stub.Embed(request, timeout=LONG_DEADLINE_S, metadata=metadata)
            tally.codes["OK"] += 1
        except grpc.RpcError as exc:
            tally.codes[exc.code().name] += 1  # type: ignore[attr-defined]
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # type: ignore[attr-defined]
                await asyncio.sleep(0.01)  # a refusal returns at once: do not spin


async def watcher(health: health_pb2_grpc.HealthStub, until: float, tally: Tally) -> None:
    """One anonymous Watch stream, held open until the attack ends; reopened after a refusal."""
    while time.monotonic() < until:
        call = health.Watch(health_pb2.HealthCheckRequest(), timeout=max(0.1, until - time.monotonic()))
        try:
            async for _ in call:
                tally.codes["update"] += 1
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            tally.codes[code.name] += 1
            if code != grpc.StatusCode.DEADLINE_EXCEEDED:
                await asyncio.sleep(0.5)  # refused: try again, as an attacker would


async def prober(health: health_pb2_grpc.HealthStub, until: float, tally: Tally) -> None:
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            tally.codes[health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)] += 1
            tally.latencies.append(time.perf_counter() - started)
        except grpc.RpcError as exc:
            tally.codes[exc.code().name] += 1  # type: ignore[attr-defined]
        await asyncio.sleep(0.1)


async def normal_phase(address: str, seconds: float, processes: int = 1) -> Tally:
    tally = Tally()
    async with stubs(address, connections_for(processes, NORMAL_CALLERS)) as keyed:
        until = time.monotonic() + seconds
        callers = (normal_caller(keyed[i % len(keyed)], until, tally, i) for i in range(NORMAL_CALLERS))
        await asyncio.gather(*callers)
    return tally


def _as_remote_attacker() -> None:
    """Attackers are other machines: here their own CPU runs at the lowest priority, so that the server
    pays for the work they cause (refusals, parsing, tokenizing, inference), not for their client code
    on the same two cores."""
    os.nice(19)


def _watch_flood(address: str, seconds: float, out: Any, processes: int) -> None:
    """Attacker process: WATCHERS anonymous Watch streams held open for `seconds` (on as many
    connections as the normal load per server process: every process is attacked)."""
    _as_remote_attacker()

    async def flood() -> Tally:
        tally = Tally()
        connections = connections_for(processes, WATCHERS)
        async with stubs(address, connections, health_pb2_grpc.HealthStub) as health:
            until = time.monotonic() + seconds
            await asyncio.gather(*(watcher(health[i % len(health)], until, tally) for i in range(WATCHERS)))
        return tally

    out.put(("watch", dict(asyncio.run(flood()).codes)))


def _long_flood(address: str, seconds: float, out: Any, processes: int) -> None:
    """Attacker process: LONG_CALLERS keyed callers sending 512 x 20,000 characters, 0.5 s deadlines."""
    _as_remote_attacker()
    rng = random.Random(7)
    request = pb.EmbedRequest(texts=[" ".join(rng.choices(_WORDS, k=4000))[:20000] for _ in range(512)])

    async def flood() -> Tally:
        tally = Tally()
        async with stubs(address, connections_for(processes, LONG_CALLERS)) as keyed:
            until = time.monotonic() + seconds
            callers = (long_caller(keyed[i % len(keyed)], request, until, tally) for i in range(LONG_CALLERS))
            await asyncio.gather(*callers)
        return tally

    out.put(("long", dict(asyncio.run(flood()).codes)))


async def _defended(address: str, seconds: float, processes: int) -> dict[str, Tally]:
    """This process during the attack: the normal keyed callers and the health probe."""
    tallies = {"normal": Tally(), "health": Tally()}
    async with (
        stubs(address, connections_for(processes, NORMAL_CALLERS)) as keyed,
        grpc.aio.insecure_channel(address) as probe,
    ):
        until = time.monotonic() + seconds
        normal = tallies["normal"]
        tasks = [normal_caller(keyed[i % len(keyed)], until, normal, i) for i in range(NORMAL_CALLERS)]
        tasks.append(prober(health_pb2_grpc.HealthStub(probe), until, tallies["health"]))
        await asyncio.gather(*tasks)
    return tallies


ATTACKERS: dict[str, Callable[[str, float, Any, int], None]] = {"watch": _watch_flood, "long": _long_flood}


def check_attackers(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(ATTACKERS))
    if unknown or not names:
        raise ValueError(f"attackers {unknown or 'none'}: choose from {', '.join(ATTACKERS)}")


def attack_phase(
    address: str, seconds: float, names: Sequence[str] = tuple(ATTACKERS), processes: int = 1
) -> dict[str, Tally]:
    """The attackers run in processes of their own, so their CPU is not this process's event loop.
    `processes`: the server's; every kind of caller spreads over as many connections per process."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    flood = [ATTACKERS[name] for name in names]
    attackers = [context.Process(target=f, args=(address, seconds, out, processes)) for f in flood]
    for attacker in attackers:
        attacker.start()
    tallies = asyncio.run(_defended(address, seconds, processes))
    for _ in attackers:
        name, codes = out.get(timeout=seconds + 120)
        tallies[name] = Tally(Counter(codes))
    for attacker in attackers:
        attacker.join(30)
    return tallies


def run(
    bundle: str,
    seconds: float,
    baseline_s: float = 10.0,
    attackers: Sequence[str] = tuple(ATTACKERS),
    processes: int = 1,
) -> dict[str, Any]:
    check_attackers(attackers)
    server = start_server(bundle, processes)
    address = server.address
    try:
        unloaded = asyncio.run(normal_phase(address, baseline_s, processes))
        before = (server.rss_mib(), server.cache_mib())
        attack = attack_phase(address, seconds, attackers, processes)
        # "After the attack" is once the server has finished the work the attackers left (requests still
        # being refused or dropped): measured right away, a slower CPU was still holding their buffers.
        wait_idle(server.proc.pid)
        asyncio.run(normal_phase(address, 2.0, processes))  # settle: what the attack left is released
        after = (server.rss_mib(), server.cache_mib())
    finally:
        server.proc.terminate()
        server.proc.wait(30)
    result = report(unloaded, attack, before, after, seconds)
    return {**result, "attackers": list(attackers), "processes": processes}


def report(
    unloaded: Tally,
    attack: dict[str, Tally],
    before: tuple[float, float],
    after: tuple[float, float],
    seconds: float,
) -> dict[str, Any]:
    """`before`/`after`: (server RSS, embedding cache's charged size), MiB. The target is judged on RSS
    net of the cache: the cache keeps up to `embedding_cache_mb` by design, whoever's texts fill it."""
    base, hit = unloaded.summary(), attack["normal"].summary()
    ratio = hit["p99_ms"] / base["p99_ms"] if base.get("p99_ms") and hit.get("p99_ms") else float("inf")
    (rss_before, cache_before), (rss_after, cache_after) = before, after
    growth = (rss_after - cache_after) / (rss_before - cache_before) - 1.0
    health = attack["health"].codes
    unanswered = sum(n for code, n in health.items() if code != "SERVING")
    return {
        "seconds": seconds,
        "unloaded": base,
        "under_attack": {name: tally.summary() for name, tally in attack.items()},
        "rss_mib": {
            "before": round(rss_before, 1),
            "after": round(rss_after, 1),
            "growth": round(rss_after / rss_before - 1.0, 3),
            "cache_before": round(cache_before, 1),
            "cache_after": round(cache_after, 1),
            "growth_net_of_cache": round(growth, 3),
        },
        "targets": {
            "normal_p99_ratio": _verdict(
                round(ratio, 2), f"<= {TARGET_P99_RATIO}", ratio <= TARGET_P99_RATIO
            ),
            "rss_growth": _verdict(round(growth, 3), f"<= {TARGET_RSS_GROWTH}", growth <= TARGET_RSS_GROWTH),
            "health_not_serving_or_failed": _verdict(unanswered, "0", unanswered == 0),
        },
    }


def _verdict(value: float, wanted: str, holds: bool) -> dict[str, Any]:
    return {"value": value, "wanted": wanted, "holds": holds}


def main(
    bundle: str,
    seconds: float,
    out: str | None,
    baseline_s: float = 10.0,
    attackers: Sequence[str] = tuple(ATTACKERS),
    *,
    processes: int = 1,
) -> int:
    result = run(bundle, seconds, baseline_s, attackers, processes)
    text = json.dumps(result, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0
