"""Bulk embedding on Ray Data, for catalogues beyond one machine (optional extra: `pip install .[ray]`).

    streamrec-embedder embed-file catalogue.jsonl --out embeddings.npy --ray [--ray-address auto]

The driver cuts the catalogue into spans of `shard_items` rows at line ends (one pass over the bytes, no
parsing). `map_batches` hands the spans to a fixed pool of actors, one CPU each; an actor reads its span,
parses it with the single-process parser (`embedder.bulk.files.parse_line`: same rows, same `file:line`
errors) and embeds it with its own single-threaded ONNX session (the serving engine with `workers=1`,
the layout that is fastest for small CNNs, docs/performance.md). (`ray.data.read_text` is not used: it
splits on every Unicode line break, and U+2028 may stand unescaped inside a JSON string; it also makes
one block per file, which a single actor would then embed alone. Separate read tasks would need CPUs of
their own, and on a 2-CPU machine actors holding both CPUs starve them: the first version deadlocked.)

On a cluster the catalogue and the bundle directory must exist at the same path on every node (baked
into the image or on a shared volume). For outputs too big for the driver, take `embedding_dataset()`
and `write_parquet()` it to shared storage. Resume is Ray's task and actor retry, not shards: a job that
fails anyway is rerun whole.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import ray
import ray.data
import ray.exceptions
from ray.data import ActorPoolStrategy

from embedder.bulk import files as bulk_files
from embedder.bulk import job as bulk
from embedder.config import ServerConfig
from embedder.core.bundle import load_bundle
from embedder.errors import EmbedderError

Batch = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Span:
    """A byte range of a catalogue file holding up to `rows_per_span` rows: one Ray block, one read."""

    path: str
    start: int
    end: int
    first_line: int


def plan_spans(paths: Sequence[Path], rows_per_span: int) -> tuple[list[Span], int]:
    """Cut the files into spans at line ends (one pass over the bytes, no parsing); also count rows."""
    if rows_per_span <= 0:
        raise bulk_files.BulkError(f"shard_items must be > 0 (got {rows_per_span})")
    spans: list[Span] = []
    total = 0
    for path in paths:
        with bulk_files.open_catalogue(path) as f:
            start = offset = rows = 0
            first = 1
            for lineno, raw in enumerate(f, start=1):
                offset += len(raw)
                if raw.strip():
                    rows += 1
                if rows == rows_per_span:
                    spans.append(Span(str(path), start, offset, first))
                    total += rows
                    start, first, rows = offset, lineno + 1, 0
            if rows:
                spans.append(Span(str(path), start, offset, first))
                total += rows
    return spans, total


def read_spans(batch: Batch, options: bulk.BulkOptions) -> tuple[list[str], list[str]]:
    """Spans (columns of `Span` fields) -> ids and texts, by the single-process parser."""
    ids: list[str] = []
    texts: list[str] = []
    columns = (batch["path"], batch["start"], batch["end"], batch["first_line"])
    for path, start, end, first in zip(*columns, strict=True):
        with open(path, "rb") as f:
            f.seek(int(start))
            data = f.read(int(end) - int(start))
        for lineno, raw in enumerate(data.split(b"\n"), start=int(first)):
            row = bulk_files.parse_line(raw, f"{path}:{lineno}", options.text_field, options.id_field)
            if row is not None:
                ids.append(row[0])
                texts.append(row[1])
    return ids, texts


class EmbedActor:
    """Reads, parses and embeds whole spans; one ONNX session per actor, built once, reused for every span.

    Reading in the actor (not in separate Ray tasks) keeps the pipeline one stage: no resources to split
    between readers and embedders, and no extra worker processes on a small machine.
    """

    def __init__(self, config: ServerConfig, options: bulk.BulkOptions) -> None:
        one_session = dataclasses.replace(config, workers=1, tokenizer_threads=1, intra_op_threads=1)
        self._options = options
        self._embedder = bulk.LocalEmbedder(one_session, options)

    def __call__(self, batch: Batch) -> Batch:
        ids, texts = read_spans(batch, self._options)
        step = self._options.batch_items
        vectors = [self._embedder.embed(texts[i : i + step]) for i in range(0, len(texts), step)]
        embedding = np.concatenate(vectors) if vectors else np.zeros((0, self._embedder.dim), np.float32)
        return {"id": np.array(ids, dtype=object), "embedding": embedding}


def embedding_dataset(
    spans: Sequence[Span], config: ServerConfig, options: bulk.BulkOptions, actors: int
) -> ray.data.Dataset:
    """`id`, `embedding` (float32 [dim]) rows in catalogue order (with `preserve_order`): `actors` actors,
    one CPU and one ONNX session each, one span per call."""
    items = [dataclasses.asdict(span) for span in spans]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        EmbedActor,
        fn_constructor_kwargs={"config": config, "options": options},
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=actors),
        num_cpus=1,
    )


def _ordered_chunks(
    dataset: ray.data.Dataset, rows_per_chunk: int
) -> Iterator[tuple[list[str], bulk_files.FloatArray]]:
    for batch in dataset.iter_batches(batch_size=rows_per_chunk, batch_format="numpy"):
        yield [str(i) for i in batch["id"]], np.asarray(batch["embedding"], dtype=np.float32)


def _embedder_error(exc: BaseException) -> EmbedderError | None:
    """Our own error inside Ray's wrappers (task error -> user-code error -> cause), if there is one, so the
    CLI prints the same one line (`file:line: ...`) as the single-process path instead of two tracebacks."""
    stack, seen = [exc], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        # Ray re-raises a task's error as a class deriving from both RayError and the original class.
        if isinstance(current, EmbedderError) and not isinstance(current, ray.exceptions.RayError):
            return current
        for linked in (getattr(current, "cause", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                stack.append(linked)
    return None


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
    """Embed a JSONL catalogue on Ray into the same files as `embedder.bulk.embed_file` (order kept).

    `actors=0` starts one actor per CPU of the cluster. Joins the running Ray if there is one (the
    caller's `ray.init`), else starts or joins `address` and shuts it down at the end.
    """
    bulk_files.check_output_path(out)
    started = time.monotonic()
    dim = options.dimensions or load_bundle(config.bundle).manifest.dim
    spans, rows = plan_spans([input_path], options.shard_items)
    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    context = ray.data.DataContext.get_current()
    saved = (
        context.execution_options.preserve_order,
        context.enable_progress_bars,
        getattr(context, "raise_original_map_exception", False),  # absent in older Ray
    )
    try:
        # Rows must come out in catalogue order: ids and vectors are written side by side.
        context.execution_options.preserve_order = True
        context.enable_progress_bars = progress
        # A bad line raises our BulkError in an actor; unwrapped, it reaches the driver intact.
        context.raise_original_map_exception = True
        pool = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        dataset = embedding_dataset(spans, config, options, pool)
        bulk_files.write_output(out, _ordered_chunks(dataset, options.shard_items), rows, dim)
    except Exception as exc:
        found = _embedder_error(exc)
        if found is None or found is exc:
            raise
        # Our messages are one line; Ray appends its retry advice to the ones it re-raises.
        raise bulk_files.BulkError(str(found).splitlines()[0]) from None
    finally:
        (
            context.execution_options.preserve_order,
            context.enable_progress_bars,
            context.raise_original_map_exception,
        ) = saved
        if owns_ray:
            ray.shutdown()
    return bulk.BulkReport(rows, dim, 0, 0, time.monotonic() - started)
