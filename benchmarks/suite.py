"""The full benchmark: three modes for every model, quality over gRPC, then results.json, report.md, plots.

Modes: (a) model only (ONNX Runtime on fixed batch x length inputs), (b) the in-process runtime
(tokenizer + batcher + ONNX), (c) real server subprocesses over gRPC (benchmarks/end_to_end.py: closed-loop
concurrency sweep, open-loop Poisson arrivals at fractions of the measured maximum, one caller sending one
text per call, then quality through the same servers). This 2-core VM drifts between fast and
slow states (docs/performance.md), so every throughput cell is measured in rounds with the models
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
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import environment
from benchmarks.config import SuiteConfig, rotated
from benchmarks.end_to_end import run_end_to_end
from benchmarks.in_process import PaddingTally, closed_loop_engine, make_engine
from benchmarks.inputs import (
    Inputs,
    fixed_length_batch,
    length_stats,
    load_inputs,
    requests_of,
    token_lengths,
)
from benchmarks.model_only import ModelOnly
from benchmarks.models import ModelSpec

SCHEMA_VERSION = 1


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
            for m in rotated(models, r + i):
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
    tallies = {m.key: PaddingTally() for m in models}
    engines = {m.key: make_engine(m.path, tallies[m.key]) for m in models}
    out: dict[str, list[dict[str, Any]]] = {
        m.key: [{"concurrency": c, "rounds": [], "runs": []} for c in cfg.in_process_concurrency]
        for m in models
    }
    try:
        for engine in engines.values():
            engine.start()
        for r in range(cfg.rounds):
            for i, c in enumerate(cfg.in_process_concurrency):
                for m in rotated(models, r + i):
                    bar.set_description(f"(b) in-process r{r + 1} {m.key} x{c}")
                    tallies[m.key].take()
                    result = await closed_loop_engine(engines[m.key], requests, c, cfg.window())
                    run = result.to_dict()
                    run.pop("quantiles_ms")
                    # Real / padded tokens of the batches the scheduler formed (warm-up included).
                    run["padding_efficiency"] = tallies[m.key].take()
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
    inputs = load_inputs(
        cfg.input_texts, input_set=cfg.input_set, texts_file=Path(cfg.texts_file) if cfg.texts_file else None
    )
    requests = requests_of(inputs.texts, cfg.request_texts)
    config = {**dataclasses.asdict(cfg)}
    checkpoint = Checkpoint(run_dir / "partial.json", json.loads(json.dumps(config)), [m.key for m in models])
    with tqdm(total=cfg.steps(len(models)), unit="step", dynamic_ncols=True) as bar:
        model_only = checkpoint.phase("model_only", lambda: run_model_only(cfg, models, inputs, bar))
        in_process = checkpoint.phase("in_process", lambda: run_in_process(cfg, models, requests, bar))
        e2e = checkpoint.phase("end_to_end", lambda: run_end_to_end(cfg, models, inputs.texts, requests, bar))
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
