"""Bulk embedding on Ray Data, for catalogues beyond one machine (optional extra: `pip install .[ray]`).

    streamrec-embedder embed-file catalogue.jsonl --out embeddings.npy --ray [--ray-address auto]

The catalogue becomes a Dataset of (id, text) rows; `map_batches` runs an actor pool in which every actor
owns one single-threaded ONNX session (the serving engine with `workers=1`), the layout that is fastest
for small CNNs (shared/PERF_NOTES.md), one actor per CPU. Rows are parsed and embedded by the same code
as the single-process path (`embedder.bulk`), so the output files are the same. On a cluster the bundle
directory must exist at the same path on every node (baked into the image or on a shared volume); for
outputs too big for the driver, take `embedding_dataset()` and `write_parquet()` to shared storage.
Resume is Ray's task retry, not shards: a failed job is rerun whole.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import ray
import ray.data

from embedder import bulk
from embedder.bundle import load_bundle
from embedder.config import ServerConfig


class _ParseLines:
    """Raw lines -> `id`, `text` columns, with the single-process parser (so both paths agree)."""

    def __init__(self, options: bulk.BulkOptions) -> None:
        self.options = options

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        rows = [bulk.parse_line(str(line).encode(), "catalogue row", self.options) for line in batch["text"]]
        kept = [r for r in rows if r is not None]
        return {
            "id": np.array([r[0] for r in kept], dtype=object),
            "text": np.array([r[1] for r in kept], dtype=object),
        }


class EmbedActor:
    """One ONNX session per actor: built once in the actor, reused for every batch it is given."""

    def __init__(self, config: ServerConfig, options: bulk.BulkOptions) -> None:
        one_session = dataclasses.replace(config, workers=1, tokenizer_threads=1, intra_op_threads=1)
        self._embedder = bulk.LocalEmbedder(one_session, options)

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        vectors = self._embedder.embed([str(t) for t in batch["text"]])
        return {"id": batch["id"], "embedding": vectors}


def read_catalogue(paths: str | Sequence[str], options: bulk.BulkOptions) -> ray.data.Dataset:
    """JSONL file(s) -> Dataset with `id` and `text` columns."""
    source = paths if isinstance(paths, str) else list(paths)
    return ray.data.read_text(source).map_batches(
        _ParseLines, fn_constructor_args=(options,), batch_format="numpy", concurrency=1
    )


def embedding_dataset(
    catalogue: ray.data.Dataset, config: ServerConfig, options: bulk.BulkOptions, actors: int
) -> ray.data.Dataset:
    """`id`, `embedding` (float32 [dim]) rows: `actors` actors, one CPU and one ONNX session each."""
    return catalogue.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"config": config, "options": options},
        batch_size=options.batch_items,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=1,
    )


def _ordered_chunks(
    dataset: ray.data.Dataset, rows_per_chunk: int
) -> Iterator[tuple[list[str], bulk.FloatArray]]:
    for batch in dataset.iter_batches(batch_size=rows_per_chunk, batch_format="numpy"):
        yield [str(i) for i in batch["id"]], np.asarray(batch["embedding"], dtype=np.float32)


def embed_file_ray(
    input_path: Path,
    out: Path,
    config: ServerConfig,
    options: bulk.BulkOptions,
    *,
    address: str | None = None,
    actors: int = 0,
    progress: bool = True,
) -> bulk.BulkReport:
    """Embed a JSONL catalogue on Ray into the same files as `embedder.bulk.embed_file` (order kept)."""
    started = time.monotonic()
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = progress
        cpus = int(ray.cluster_resources().get("CPU", 1))
        # One CPU is left for reading and parsing when the cluster is this small.
        pool = actors or max(1, cpus - 1 if cpus > 2 else cpus)
        dataset = embedding_dataset(read_catalogue(str(input_path), options), config, options, pool)
        dim = options.dimensions or load_bundle(config.bundle).manifest.dim
        rows = bulk.count_rows(input_path)
        bulk.write_output(out, _ordered_chunks(dataset, options.shard_items), rows, dim)
    finally:
        if owns_ray:
            ray.shutdown()
    return bulk.BulkReport(rows, dim, 0, 0, time.monotonic() - started)
