"""Every knob of a benchmark run, in one dataclass stored in results.json; the full and --quick presets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from benchmarks.loadgen import Window
from embedder.config import ServerConfig

T = TypeVar("T")


@dataclass(frozen=True)
class SuiteConfig:
    """The full run (defaults: ~15 min for four models on 2 idle cores). Durations in seconds."""

    quick: bool = False
    rounds: int = 3
    request_texts: int = 32
    input_texts: int = 4096
    # The texts every throughput figure is measured on: a set of benchmarks.inputs.INPUT_SETS, or a
    # user's file (JSONL or TXT) when `texts_file` is set. Teacher agreement always uses `heldout`.
    input_set: str = "items"
    texts_file: str = ""
    # (a) model only: batch x tokens grid, `cell_seconds` per cell.
    grid_batches: tuple[int, ...] = (1, 16, 64)
    grid_seq_lens: tuple[int, ...] = (16, 32, 64, 128)
    cell_seconds: float = 1.0
    # (b) and (c) closed loop: caller counts; a cell measures at least load_seconds and min_requests
    # completions, at most max_load_seconds (see loadgen.Window).
    # The CNN still gains from 16 to 64 callers on 2 cores; 128 shows where both modes level off.
    in_process_concurrency: tuple[int, ...] = (16, 64, 128)
    grpc_concurrency: tuple[int, ...] = (1, 4, 16, 64, 128)
    load_seconds: float = 3.0
    min_requests: int = 20
    max_load_seconds: float = 20.0
    warmup_seconds: float = 1.0
    # (c) open loop: Poisson arrivals at these fractions of the best closed-loop median.
    open_fractions: tuple[float, ...] = (0.5, 0.9)
    open_min_seconds: float = 4.0
    open_max_seconds: float = 15.0
    open_min_requests: int = 200
    # (c) one caller, one text per call.
    single_seconds: float = 3.0
    single_min_calls: int = 200
    # Quality: STS-B dev pairs (None = all 1,500) and held-out texts for teacher agreement (the
    # training job's evaluation uses 10,000 texts and 20,000 pairs: same sizes, comparable figures).
    sts_pairs: int | None = None
    agreement_texts: int = 10000
    workers: int = dataclasses.field(default_factory=lambda: ServerConfig().resolved_workers())

    @classmethod
    def quick_preset(cls) -> SuiteConfig:
        """Under 2 minutes with four models: one round, short cells, subsets of the quality sets."""
        return cls(
            quick=True,
            rounds=1,
            input_texts=1024,
            grid_batches=(1, 16),
            cell_seconds=0.25,
            in_process_concurrency=(16,),
            grpc_concurrency=(1, 4, 16),
            load_seconds=1.0,
            min_requests=4,
            max_load_seconds=4.0,
            warmup_seconds=0.3,
            open_min_seconds=1.5,
            open_max_seconds=3.0,
            open_min_requests=30,
            single_seconds=0.5,
            single_min_calls=20,
            sts_pairs=250,
            agreement_texts=300,
        )

    def scaled(self, factor: float) -> SuiteConfig:
        """The same run with every measured duration multiplied by `factor`."""
        return dataclasses.replace(
            self,
            cell_seconds=self.cell_seconds * factor,
            load_seconds=self.load_seconds * factor,
            max_load_seconds=self.max_load_seconds * factor,
            open_min_seconds=self.open_min_seconds * factor,
            open_max_seconds=self.open_max_seconds * factor,
            single_seconds=self.single_seconds * factor,
        )

    def window(self) -> Window:
        """The measurement window of every closed-loop cell, in-process and over gRPC."""
        return Window(
            seconds=self.load_seconds,
            warmup_s=self.warmup_seconds,
            min_requests=self.min_requests,
            max_seconds=self.max_load_seconds,
        )

    def steps(self, n_models: int) -> int:
        """Progress-bar units: one per measurement, one per model for quality, one for the outputs."""
        grid = len(self.grid_batches) * len(self.grid_seq_lens)
        per_round = grid + len(self.in_process_concurrency) + len(self.grpc_concurrency)
        per_model = self.rounds * per_round + len(self.open_fractions) + 2  # + single caller, quality
        return n_models * per_model + 1


def rotated(items: Sequence[T], r: int) -> list[T]:
    """Round r starts with a different model, so no model always runs right after the same one."""
    k = r % len(items)
    return [*items[k:], *items[:k]]
