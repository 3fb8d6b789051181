"""Mode (c), end to end: real `streamrec-embedder serve` subprocesses driven over gRPC; quality as served.

All models' servers run side by side for the whole phase (an idle server costs no CPU: ORT threads do not
spin), so the rounds can interleave models without paying a server start per measurement. In order:
closed-loop concurrency sweep (rounds, models interleaved), open-loop Poisson arrivals at fractions of the
measured maximum, one caller sending one text per call, then quality through the same servers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks.config import SuiteConfig, rotated
from benchmarks.inputs import load_inputs
from benchmarks.loadgen import LoadResult, Window, closed_loop, open_loop, single_caller_latency
from benchmarks.models import TEACHER, ModelSpec
from benchmarks.quality import QualityInputs, Served, embed_over_grpc, scores
from benchmarks.serving import ServerProcess, rss_sampler, server_process

Cells = dict[str, list[dict[str, Any]]]


@contextmanager
def running_servers(bundles: Mapping[str, Path]) -> Iterator[dict[str, ServerProcess]]:
    """One server per model with the shipped default config; all stopped on exit."""
    with ExitStack() as stack:
        yield {key: stack.enter_context(server_process(path)) for key, path in bundles.items()}


def closed(
    server: ServerProcess, requests: Sequence[list[str]], concurrency: int, window: Window
) -> LoadResult:
    """A closed-loop run with the server's CPU ms per item (robust to other tenants of the machine)."""
    return closed_loop(server.address, requests, concurrency, window, cpu_pid=server.proc.pid)


def open_rate(
    server: ServerProcess,
    requests: Sequence[list[str]],
    items_per_s: float,
    *,
    min_seconds: float,
    max_seconds: float,
    min_requests: int,
) -> LoadResult:
    """Poisson arrivals offering `items_per_s`; runs long enough for `min_requests` (within the bounds)."""
    request_texts = len(requests[0])
    rate = items_per_s / request_texts
    seconds = min(max_seconds, max(min_seconds, min_requests / rate))
    return open_loop(server.address, requests, rate, duration_s=seconds)


def closed_sweep(
    cfg: SuiteConfig,
    models: Sequence[ModelSpec],
    servers: dict[str, ServerProcess],
    requests: list[list[str]],
    bar: Any,
) -> Cells:
    """Every (round, concurrency, model) cell; models rotate so none always follows the same one."""
    out: Cells = {
        m.key: [{"concurrency": c, "rounds": [], "runs": []} for c in cfg.grpc_concurrency] for m in models
    }
    for r in range(cfg.rounds):
        for i, c in enumerate(cfg.grpc_concurrency):
            for m in rotated(models, r + i):
                bar.set_description(f"(c) gRPC closed loop r{r + 1} {m.key} x{c}")
                run = closed(servers[m.key], requests, c, cfg.window()).to_dict()
                run.pop("quantiles_ms")
                out[m.key][i]["rounds"].append(run["items_per_s"])
                out[m.key][i]["runs"].append(run)
                bar.update()
    return out


def open_sweep(
    cfg: SuiteConfig,
    models: Sequence[ModelSpec],
    servers: dict[str, ServerProcess],
    requests: list[list[str]],
    closed_runs: Cells,
    *,
    bar: Any,
) -> Cells:
    """Each model at each fraction of its own best closed-loop median (its measured maximum)."""
    from benchmarks.summary import best_cell  # the same "measured maximum" the report shows

    out: Cells = {m.key: [] for m in models}
    for fraction in cfg.open_fractions:
        for m in models:
            bar.set_description(f"(c) gRPC open loop {m.key} @{fraction:.0%}")
            basis = best_cell(closed_runs[m.key])["median"]
            if basis <= 0:
                raise RuntimeError(
                    f"{m.key}: no request completed in any closed-loop cell; the server is stuck or the "
                    "machine too busy to measure (finished phases are kept: rerun with --resume)"
                )
            result = open_rate(
                servers[m.key],
                requests,
                fraction * basis,
                min_seconds=cfg.open_min_seconds,
                max_seconds=cfg.open_max_seconds,
                min_requests=cfg.open_min_requests,
            )
            offered = {
                "fraction": fraction,
                "basis_items_per_s": basis,
                "offered_items_per_s": fraction * basis,
            }
            out[m.key].append({**offered, **result.to_dict()})
            bar.update()
    return out


def single_caller(
    cfg: SuiteConfig,
    models: Sequence[ModelSpec],
    servers: dict[str, ServerProcess],
    texts: list[str],
    bar: Any,
) -> dict[str, dict[str, Any]]:
    """One caller, one text per call: the latency a lone ranking request sees (issue 3's p50/p99)."""
    out = {}
    for m in models:
        bar.set_description(f"(c) gRPC one caller, one text {m.key}")
        result = single_caller_latency(
            servers[m.key].address, texts[:500], seconds=cfg.single_seconds, min_calls=cfg.single_min_calls
        )
        out[m.key] = result.to_dict()
        bar.update()
    return out


def quality(
    cfg: SuiteConfig, models: Sequence[ModelSpec], servers: dict[str, ServerProcess], bar: Any
) -> dict[str, dict[str, Any]]:
    """STS-B dev and teacher agreement of every model, all embeddings fetched from its server."""
    # Agreement on the corpus's held-out split, whatever the throughput set: comparable with training's eval.
    agreement = load_inputs(cfg.agreement_texts, input_set="heldout")
    qin = QualityInputs.load(agreement.texts, cfg.sts_pairs)
    served: dict[str, Served] = {}
    for m in models:
        bar.set_description(f"quality over gRPC {m.key}")
        served[m.key] = embed_over_grpc(servers[m.key].address, qin)
        bar.update()
    teacher = served.get(TEACHER)
    sizes = {
        "sts_pairs": len(qin.sts.scores),
        "agreement_texts": len(qin.texts),
        "agreement_set": agreement.name,
    }
    return {m.key: {**scores(served[m.key], qin, teacher), **sizes} for m in models}


def run_end_to_end(
    cfg: SuiteConfig, models: Sequence[ModelSpec], texts: list[str], requests: list[list[str]], bar: Any
) -> dict[str, Any]:
    """Mode (c) and quality: every model's server up at once; server start time and peak RSS under load."""
    bar.set_description("(c) starting servers")
    with running_servers({m.key: m.path for m in models}) as servers, ExitStack() as sampling:
        for server in servers.values():
            sampling.enter_context(rss_sampler(server))
        closed_runs = closed_sweep(cfg, models, servers, requests, bar)
        open_runs = open_sweep(cfg, models, servers, requests, closed_runs, bar=bar)
        single = single_caller(cfg, models, servers, texts, bar)
        info = {
            k: {"start_to_serving_s": s.start_to_serving_s, "peak_rss_mb_under_load": s.peak_rss_mb}
            for k, s in servers.items()
        }
        scored = quality(cfg, models, servers, bar)
    return {
        "grpc_closed": closed_runs,
        "grpc_open": open_runs,
        "grpc_single": single,
        "quality": scored,
        "servers": info,
    }
