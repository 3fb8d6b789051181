"""`streamrec-bench http`: the OpenAI-compatible HTTP front next to gRPC, on one server, same texts.

One `serve` process with the HTTP front on (`--http-port`), the same closed-loop callers of 32-text
requests, alternating gRPC and HTTP round by round (this VM drifts between fast and slow states, so
the two are measured interleaved, never one long run each). Reported: items/s (median of rounds),
server CPU ms per item, and HTTP ÷ gRPC.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks import environment
from benchmarks.infinity_peer import _free_port, _result, closed_loop_http
from benchmarks.inputs import Inputs, requests_of
from benchmarks.loadgen import Window, closed_loop
from benchmarks.serving import server_process


def run_http_vs_grpc(
    bundle: Path, inputs: Inputs, *, callers: int = 16, seconds: float = 5.0, rounds: int = 3
) -> dict[str, Any]:
    """gRPC and HTTP against one server, `rounds` interleaved rounds of `seconds` each."""
    requests = requests_of(inputs.texts, 32)
    window = Window(seconds, warmup_s=1.0, min_requests=4, max_seconds=6 * seconds, max_warmup_s=60.0)
    http_port = _free_port()
    runs: dict[str, list[dict[str, Any]]] = {"grpc": [], "http": []}
    with server_process(bundle, http_port=http_port, http_host="127.0.0.1") as server:
        pid = server.proc.pid
        url = f"http://127.0.0.1:{http_port}/v1"
        for _ in range(rounds):
            runs["grpc"].append(_result(closed_loop(server.address, requests, callers, window, cpu_pid=pid)))
            http = closed_loop_http(url, requests, callers, window, pid, model=None, mode="http-front")
            runs["http"].append(_result(http))
    medians = {k: statistics.median(r["items_per_s"] for r in v) for k, v in runs.items()}
    cpu = {k: _median_or_none([r.get("cpu_ms_per_item") for r in v]) for k, v in runs.items()}
    return {
        "environment": environment.describe(),
        "inputs": inputs.describe(),
        "callers": callers,
        "rounds": rounds,
        "items_per_s_median": medians,
        "server_cpu_ms_per_item_median": cpu,
        "http_over_grpc": medians["http"] / medians["grpc"] if medians["grpc"] else None,
        "runs": runs,
    }


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def markdown(report: dict[str, Any]) -> str:
    env, inputs = report["environment"], report["inputs"]
    flags = ", ".join(env["cpu_flags"]) or "no AVX flags"
    lines = [
        f"Inputs: set `{inputs['set']}`, {inputs['count']} texts; {report['callers']} callers x 32 texts; "
        f"{report['rounds']} interleaved round(s) on one server. CPU: {env['cpu_model']}, {flags}.",
        "",
        "| front | items/s (median) | server CPU ms/item |",
        "|---|---|---|",
    ]
    for front in ("grpc", "http"):
        cpu = report["server_cpu_ms_per_item_median"][front]
        lines.append(
            f"| {front} | {report['items_per_s_median'][front]:,.0f} | "
            f"{'n/a' if cpu is None else f'{cpu:.3f}'} |"
        )
    ratio = report["http_over_grpc"]
    lines.append("")
    lines.append(f"HTTP ÷ gRPC items/s: {'n/a' if ratio is None else f'{ratio:.2f}'}")
    return "\n".join(lines)
