"""The full benchmark: three modes for every model, quality over gRPC, then results.json, report.md, plots.

Modes: (a) model only (ONNX Runtime on fixed batch x length inputs), (b) the in-process runtime
(tokenizer + batcher + ONNX), (c) real server subprocesses over gRPC (closed-loop concurrency sweep, then
open-loop Poisson arrivals at fractions of the measured maximum). This 2-core VM drifts between fast and
slow states (shared/PERF_NOTES.md), so every throughput cell is measured in rounds with the models
interleaved (their order rotating each round) and reported as median and max.

Each finished phase is saved to `partial.json` in the run directory, so `--resume RUN_ID` skips it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import environment
from benchmarks.end_to_end import closed, open_rate, running_servers
from benchmarks.in_process import closed_loop_engine, make_engine
from benchmarks.inputs import (
    Inputs,
    fixed_length_batch,
    length_stats,
    load_inputs,
    requests_of,
    token_lengths,
)
from benchmarks.model_only import ModelOnly
from benchmarks.models import TEACHER, ModelSpec
from benchmarks.quality import QualityInputs, Served, embed_over_grpc, scores
from embedder.config import ServerConfig

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SuiteConfig:
    """Every knob of a run; stored in results.json. Durations are measured seconds per cell."""

    quick: bool = False
    rounds: int = 3
    request_texts: int = 32
    input_texts: int = 4096
    grid_batches: tuple[int, ...] = (1, 16, 64)
    grid_seq_lens: tuple[int, ...] = (16, 32, 64, 128)
    cell_seconds: float = 1.0
    in_process_concurrency: tuple[int, ...] = (16, 64)
    grpc_concurrency: tuple[int, ...] = (1, 4, 16, 64)
    load_seconds: float = 3.0
    warmup_seconds: float = 1.0
    open_fractions: tuple[float, ...] = (0.5, 0.9)
    open_min_seconds: float = 4.0
    open_max_seconds: float = 15.0
    open_min_requests: int = 200
    sts_pairs: int | None = None
    agreement_texts: int = 2000
    workers: int = dataclasses.field(default_factory=lambda: ServerConfig().resolved_workers())

    @classmethod
    def quick_preset(cls) -> SuiteConfig:
        """Under 2 minutes with three models: one round, short cells, a subset of the quality sets."""
        return cls(
            quick=True,
            rounds=1,
            input_texts=1024,
            grid_batches=(1, 16),
            cell_seconds=0.25,
            in_process_concurrency=(16,),
            load_seconds=1.0,
            warmup_seconds=0.3,
            open_min_seconds=1.5,
            open_max_seconds=3.0,
            open_min_requests=30,
            sts_pairs=250,
            agreement_texts=300,
        )

    def scaled(self, factor: float) -> SuiteConfig:
        """The same run with every measured duration multiplied by `factor`."""
        return dataclasses.replace(
            self,
            cell_seconds=self.cell_seconds * factor,
            load_seconds=self.load_seconds * factor,
            open_min_seconds=self.open_min_seconds * factor,
            open_max_seconds=self.open_max_seconds * factor,
        )

    def steps(self, n_models: int) -> int:
        """Progress-bar units: one per measurement, one per model for quality, one for the outputs."""
        grid = len(self.grid_batches) * len(self.grid_seq_lens)
        per_round = grid + len(self.in_process_concurrency) + len(self.grpc_concurrency)
        return n_models * (self.rounds * per_round + len(self.open_fractions) + 1) + 1


def _rotated(models: Sequence[ModelSpec], r: int) -> list[ModelSpec]:
    """Round r starts with a different model, so no model always runs right after the same one."""
    k = r % len(models)
    return [*models[k:], *models[:k]]


def run_model_only(
    cfg: SuiteConfig, models: Sequence[ModelSpec], inputs: Inputs, bar: tqdm[Any]
) -> dict[str, list[dict[str, Any]]]:
    """Mode (a): items/s for every (batch, seq_len) cell, `cfg.rounds` values each."""
    cells = [(b, n) for n in cfg.grid_seq_lens for b in cfg.grid_batches]
    texts = inputs.texts[:2000]
    out: dict[str, list[dict[str, Any]]] = {}
    for m in models:
        out[m.key] = [{"batch": b, "seq_len": n, "rounds": []} for b, n in cells]
    runners = {m.key: ModelOnly(m.bundle.model_path, cfg.workers) for m in models}
    feeds = {
        (m.key, cell): fixed_length_batch(m.bundle.tokenizer_path, texts, *cell)
        for m in models
        for cell in cells
    }
    for r in range(cfg.rounds):
        for i, (batch, seq_len) in enumerate(cells):
            for m in _rotated(models, r + i):
                bar.set_description(f"(a) model only r{r + 1} {m.key} b{batch} s{seq_len}")
                ids, mask = feeds[m.key, (batch, seq_len)]
                if r == 0:
                    runners[m.key].warm_up(ids, mask)
                rate = runners[m.key].items_per_s(ids, mask, cfg.cell_seconds)
                out[m.key][i]["rounds"].append(rate)
                bar.update()
    return out


async def _in_process(
    cfg: SuiteConfig, models: Sequence[ModelSpec], requests: list[list[str]], bar: tqdm[Any]
) -> dict[str, list[dict[str, Any]]]:
    engines = {m.key: make_engine(m.path) for m in models}
    out: dict[str, list[dict[str, Any]]] = {
        m.key: [{"concurrency": c, "rounds": [], "runs": []} for c in cfg.in_process_concurrency]
        for m in models
    }
    try:
        for engine in engines.values():
            engine.start()
        for r in range(cfg.rounds):
            for i, c in enumerate(cfg.in_process_concurrency):
                for m in _rotated(models, r + i):
                    bar.set_description(f"(b) in-process r{r + 1} {m.key} x{c}")
                    result = await closed_loop_engine(
                        engines[m.key], requests, c, cfg.load_seconds, cfg.warmup_seconds
                    )
                    run = result.to_dict()
                    run.pop("quantiles_ms")
                    out[m.key][i]["rounds"].append(result.items_per_s)
                    out[m.key][i]["runs"].append(run)
                    bar.update()
    finally:
        for engine in engines.values():
            await engine.close()
    return out


def run_in_process(
    cfg: SuiteConfig, models: Sequence[ModelSpec], requests: list[list[str]], bar: tqdm[Any]
) -> dict[str, list[dict[str, Any]]]:
    """Mode (b): closed-loop callers in this process against each model's `EmbeddingEngine`."""
    return asyncio.run(_in_process(cfg, models, requests, bar))


def _closed_sweep(
    cfg: SuiteConfig,
    models: Sequence[ModelSpec],
    servers: dict[str, Any],
    requests: list[list[str]],
    bar: Any,
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {
        m.key: [{"concurrency": c, "rounds": [], "runs": []} for c in cfg.grpc_concurrency] for m in models
    }
    for r in range(cfg.rounds):
        for i, c in enumerate(cfg.grpc_concurrency):
            for m in _rotated(models, r + i):
                bar.set_description(f"(c) gRPC closed loop r{r + 1} {m.key} x{c}")
                run = closed(servers[m.key], requests, c, cfg.load_seconds, cfg.warmup_seconds).to_dict()
                run.pop("quantiles_ms")
                out[m.key][i]["rounds"].append(run["items_per_s"])
                out[m.key][i]["runs"].append(run)
                bar.update()
    return out


def _open_loop(
    cfg: SuiteConfig,
    models: Sequence[ModelSpec],
    servers: dict[str, Any],
    requests: list[list[str]],
    closed_runs: dict[str, list[dict[str, Any]]],
    *,
    bar: Any,
) -> dict[str, list[dict[str, Any]]]:
    from benchmarks.summary import best_cell  # the same "measured maximum" the report shows

    out: dict[str, list[dict[str, Any]]] = {m.key: [] for m in models}
    for fraction in cfg.open_fractions:
        for m in models:
            bar.set_description(f"(c) gRPC open loop {m.key} @{fraction:.0%}")
            basis = best_cell(closed_runs[m.key])["median"]
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


def _quality(
    cfg: SuiteConfig, models: Sequence[ModelSpec], servers: dict[str, Any], inputs: Inputs, bar: Any
) -> dict[str, dict[str, Any]]:
    qin = QualityInputs.load(inputs.texts[: cfg.agreement_texts], cfg.sts_pairs)
    served: dict[str, Served] = {}
    for m in models:
        bar.set_description(f"quality over gRPC {m.key}")
        served[m.key] = embed_over_grpc(servers[m.key].address, qin)
        bar.update()
    teacher = served.get(TEACHER)
    sizes = {"sts_pairs": len(qin.sts.scores), "agreement_texts": len(qin.texts)}
    return {m.key: {**scores(served[m.key], qin, teacher), **sizes} for m in models}


def run_end_to_end(
    cfg: SuiteConfig, models: Sequence[ModelSpec], inputs: Inputs, requests: list[list[str]], bar: Any
) -> dict[str, Any]:
    """Mode (c) and quality: every model's server up at once, closed sweep, open loop, quality."""
    bar.set_description("(c) starting servers")
    with running_servers({m.key: m.path for m in models}) as servers:
        servers_info = {k: {"start_to_serving_s": s.start_to_serving_s} for k, s in servers.items()}
        closed_runs = _closed_sweep(cfg, models, servers, requests, bar)
        for key, server in servers.items():
            servers_info[key]["rss_mb_after_load"] = server.rss_mb()
        open_runs = _open_loop(cfg, models, servers, requests, closed_runs, bar=bar)
        quality = _quality(cfg, models, servers, inputs, bar)
    return {"grpc_closed": closed_runs, "grpc_open": open_runs, "quality": quality, "servers": servers_info}


class Checkpoint:
    """`partial.json` in the run directory: finished phases, reloaded by `--resume`."""

    def __init__(self, path: Path, config: dict[str, Any], models: list[str]) -> None:
        self.path = path
        self.state: dict[str, Any] = {"config": config, "models": models, "phases": {}}
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved["config"] != config or saved["models"] != models:
                raise ValueError(f"{path} was written by another config or model list; cannot resume it")
            self.state = saved

    def phase(self, name: str, run: Callable[[], Any]) -> Any:
        if name not in self.state["phases"]:
            self.state["phases"][name] = run()
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state, default=float), encoding="utf-8")
            tmp.replace(self.path)
        return self.state["phases"][name]


def input_facts(models: Sequence[ModelSpec], inputs: Inputs) -> dict[str, Any]:
    """Where the texts came from and their token-length distribution under each model's tokenizer."""
    lengths = {
        m.key: length_stats(
            token_lengths(m.bundle.tokenizer_path, inputs.texts), m.bundle.manifest.max_tokens
        )
        for m in models
    }
    return {**inputs.describe(), "token_lengths": lengths}


def run_suite(
    cfg: SuiteConfig, models: Sequence[ModelSpec], skipped: dict[str, str], run_dir: Path
) -> dict[str, Any]:
    """Measure everything into `run_dir`; returns the results (also written as results.json)."""
    from benchmarks.publish import write_outputs  # matplotlib loads only once there is something to plot

    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    env_start = environment.describe()
    inputs = load_inputs(cfg.input_texts)
    requests = requests_of(inputs.texts, cfg.request_texts)
    config = {**dataclasses.asdict(cfg)}
    checkpoint = Checkpoint(run_dir / "partial.json", json.loads(json.dumps(config)), [m.key for m in models])
    with tqdm(total=cfg.steps(len(models)), unit="step", dynamic_ncols=True) as bar:
        model_only = checkpoint.phase("model_only", lambda: run_model_only(cfg, models, inputs, bar))
        in_process = checkpoint.phase("in_process", lambda: run_in_process(cfg, models, requests, bar))
        e2e = checkpoint.phase("end_to_end", lambda: run_end_to_end(cfg, models, inputs, requests, bar))
        results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run_id": run_dir.name,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "environment": env_start,
            "config": config,
            "models": {m.key: m.describe() for m in models},
            "skipped": skipped,
            "inputs": input_facts(models, inputs),
            "model_only": model_only,
            "in_process": in_process,
            **e2e,
        }
        results["load_avg_at_end"] = list(os.getloadavg())
        results["duration_s"] = time.time() - started
        bar.set_description("writing results, report, plots")
        write_outputs(results, run_dir)
        bar.update()
    return results
