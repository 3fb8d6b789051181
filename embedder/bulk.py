"""Bulk catalogue embedding: JSONL in, `.npy` (+ ids) or `.parquet` out, with a progress bar and resume.

    streamrec-embedder embed-file catalogue.jsonl --out embeddings.npy            # in-process (ONNX here)
    streamrec-embedder embed-file catalogue.jsonl --out e.npy --address lb:50051  # through running servers

Each input line is a JSON object with an id and a text (`{"id": "tt0108778", "text": "..."}`). The input
is cut into shards of `shard_items` rows. A finished shard is written atomically to `<out>.parts/`
together with a digest of its input lines; a rerun reuses every shard whose digest still matches and
embeds only the rest, so a killed job continues where it stopped and an edited catalogue re-embeds only
the shards that changed. Settings that change the vectors (model, options, fields, shard size) are kept in
`<out>.parts/job.json`; a rerun with other settings is refused instead of mixing vectors. Once every shard
is done they are joined into `--out` (`.npy`: float32 [rows, dim] plus `<stem>.ids.jsonl`, one JSON
string per line; `.parquet`: columns `id`, `embedding`) and the parts are removed.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from embedder.bundle import load_bundle
from embedder.client import ClientOptions, EmbedderClient
from embedder.config import ServerConfig
from embedder.engine import EmbeddingEngine, EmbedOptions
from embedder.errors import EmbedderError

FloatArray = npt.NDArray[np.float32]
JOB_FORMAT = 1
JOB_FILE = "job.json"


class BulkError(EmbedderError):
    """Bad input line, unusable output path, or parts left by a job with other settings."""


@dataclass(frozen=True)
class BulkOptions:
    """What a bulk job reads and how it embeds. `batch_items` and concurrency do not change the vectors."""

    text_field: str = "text"
    id_field: str = "id"
    shard_items: int = 8192
    batch_items: int = 64
    normalize: bool = True
    dimensions: int = 0
    truncate: bool = True

    def embed_options(self) -> EmbedOptions:
        return EmbedOptions(normalize=self.normalize, dimensions=self.dimensions, truncate=self.truncate)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed job must share with the one that wrote the parts."""
        keep = ("text_field", "id_field", "shard_items", "normalize", "dimensions", "truncate")
        return {k: getattr(self, k) for k in keep}


@dataclass(frozen=True)
class BulkReport:
    rows: int
    dim: int
    shards: int
    shards_reused: int
    seconds: float


class BatchEmbedder(Protocol):
    """A model that embeds batches of texts; `model` identifies it in the resume fingerprint."""

    model: dict[str, Any]
    dim: int

    def map(self, batches: Sequence[list[str]]) -> Iterator[FloatArray]: ...

    def close(self) -> None: ...


def clip(texts: Iterable[str], max_chars: int, truncate: bool) -> list[str]:
    """With truncation on, cut texts to the server's character limit: far past max_tokens, so no change."""
    return [t[:max_chars] for t in texts] if truncate else list(texts)


class LocalEmbedder:
    """In-process: the serving engine's tokenizer and ONNX sessions, one batch per worker thread."""

    def __init__(self, config: ServerConfig, options: BulkOptions) -> None:
        bundle = load_bundle(config.bundle)
        self.engine = EmbeddingEngine(bundle, dataclasses.replace(config, tokenizer_threads=1))
        self._options = options
        self._max_chars = config.max_text_chars
        self._pool = ThreadPoolExecutor(self.engine.workers, thread_name_prefix="bulk-embed")
        m = bundle.manifest
        self.model = {"name": m.name, "version": m.version, "sha256": m.sha256}
        self.dim = options.dimensions or m.dim

    def embed(self, texts: list[str]) -> FloatArray:
        """One batch, in the calling thread."""
        clipped = clip(texts, self._max_chars, self._options.truncate)
        return self.engine.embed_in_process(clipped, self._options.embed_options())

    def map(self, batches: Sequence[list[str]]) -> Iterator[FloatArray]:
        return self._pool.map(self.embed, batches)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.engine.close_sync()


class RemoteEmbedder:
    """Through running servers (a balancer or several replicas), `concurrency` requests in flight."""

    def __init__(self, addresses: Sequence[str], options: BulkOptions, concurrency: int = 4) -> None:
        client_options = ClientOptions(
            normalize=options.normalize,
            dimensions=options.dimensions,
            truncate=options.truncate,
            timeout_s=120.0,
            max_attempts=8,
        )
        self.client = EmbedderClient(addresses, client_options)
        info = self.client.model_info()
        self._options = options
        self._max_chars = info.limits.max_text_chars or 20000
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="bulk-embed")
        self.model = {"name": info.name, "version": info.version, "sha256": info.sha256}
        self.dim = options.dimensions or info.dim

    def embed(self, texts: list[str]) -> FloatArray:
        return self.client.embed(clip(texts, self._max_chars, self._options.truncate))

    def map(self, batches: Sequence[list[str]]) -> Iterator[FloatArray]:
        return self._pool.map(self.embed, batches)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


@dataclass(frozen=True)
class Shard:
    index: int
    ids: list[str]
    texts: list[str]
    digest: str


def parse_line(raw: bytes, where: str, options: BulkOptions) -> tuple[str, str] | None:
    """(id, text) of one JSONL line; None for a blank line. Ids are returned as strings."""
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        raise BulkError(f"{where}: not a JSON object") from None
    if not isinstance(obj, dict):
        raise BulkError(f"{where}: not a JSON object")
    text, ident = obj.get(options.text_field), obj.get(options.id_field)
    if not isinstance(text, str):
        raise BulkError(f"{where}: needs a string field {options.text_field!r}")
    if not isinstance(ident, str | int) or isinstance(ident, bool):
        raise BulkError(f"{where}: needs a string or integer field {options.id_field!r}")
    return str(ident), text


def read_shards(path: Path, options: BulkOptions) -> Iterator[Shard]:
    """Shards of `shard_items` rows in file order; the digest covers the raw lines of the shard."""
    ids: list[str] = []
    texts: list[str] = []
    digest = hashlib.blake2b(digest_size=16)
    index = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            row = parse_line(raw, f"{path}:{lineno}", options)
            if row is None:
                continue
            ids.append(row[0])
            texts.append(row[1])
            digest.update(raw.rstrip(b"\r\n") + b"\n")
            if len(ids) == options.shard_items:
                yield Shard(index, ids, texts, digest.hexdigest())
                ids, texts, digest, index = [], [], hashlib.blake2b(digest_size=16), index + 1
    if ids:
        yield Shard(index, ids, texts, digest.hexdigest())


def count_rows(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for raw in f if raw.strip())


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def ids_path(out: Path) -> Path:
    """Where the ids of a `.npy` output go: `embeddings.npy` -> `embeddings.ids.jsonl`."""
    return out.with_name(out.stem + ".ids.jsonl")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _prepare_parts(parts: Path, job: dict[str, Any], restart: bool) -> None:
    """Create the parts dir, or check that the parts in it were made with the same settings."""
    if restart and parts.exists():
        shutil.rmtree(parts)
    job_file = parts / JOB_FILE
    if job_file.exists():
        found = json.loads(job_file.read_text())
        if found != job:
            raise BulkError(
                f"{parts} holds parts of a job with other settings ({found} != {job}); "
                "rerun with --restart to discard them"
            )
        return
    parts.mkdir(parents=True, exist_ok=True)
    _atomic_write(job_file, json.dumps(job, sort_keys=True).encode())


def _shard_files(parts: Path, index: int) -> tuple[Path, Path]:
    return parts / f"shard-{index:06d}.npy", parts / f"shard-{index:06d}.json"


def _is_done(parts: Path, shard: Shard) -> bool:
    array_file, meta_file = _shard_files(parts, shard.index)
    if not (array_file.exists() and meta_file.exists()):
        return False
    meta = json.loads(meta_file.read_text())
    return bool(meta.get("digest") == shard.digest and meta.get("rows") == len(shard.ids))


def _embed_shard(
    parts: Path, shard: Shard, embedder: BatchEmbedder, batch_items: int, bar: tqdm[Any]
) -> None:
    batches = [shard.texts[i : i + batch_items] for i in range(0, len(shard.texts), batch_items)]
    rows: list[FloatArray] = []
    for batch, result in zip(batches, embedder.map(batches), strict=True):
        rows.append(result)
        bar.update(len(batch))
    array_file, meta_file = _shard_files(parts, shard.index)
    tmp = array_file.with_name(array_file.stem + ".tmp.npy")
    np.save(tmp, np.concatenate(rows).astype(np.float32, copy=False))
    os.replace(tmp, array_file)
    # The sidecar is written last: it is what marks the shard as done.
    meta = {"digest": shard.digest, "rows": len(shard.ids), "ids": shard.ids}
    _atomic_write(meta_file, json.dumps(meta).encode())


def _load_shards(parts: Path, count: int) -> Iterator[tuple[list[str], FloatArray]]:
    for index in range(count):
        array_file, meta_file = _shard_files(parts, index)
        yield json.loads(meta_file.read_text())["ids"], np.load(array_file)


def write_output(out: Path, chunks: Iterable[tuple[Sequence[str], FloatArray]], rows: int, dim: int) -> None:
    """Write (ids, vectors) chunks in order to `out` (.npy + ids file, or .parquet), atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        _write_parquet(out, chunks, dim)
        return
    tmp = out.with_name(out.name + ".tmp")
    tmp_ids = out.with_name(ids_path(out).name + ".tmp")
    matrix = np.lib.format.open_memmap(  # type: ignore[no-untyped-call]
        tmp, mode="w+", dtype=np.float32, shape=(rows, dim)
    )
    start = 0
    with tmp_ids.open("w") as id_file:
        for ids, vectors in chunks:
            matrix[start : start + len(ids)] = vectors
            start += len(ids)
            id_file.writelines(json.dumps(i) + "\n" for i in ids)
    matrix.flush()
    del matrix
    if start != rows:
        raise BulkError(f"wrote {start} rows, expected {rows}")
    os.replace(tmp_ids, ids_path(out))
    os.replace(tmp, out)


def _write_parquet(out: Path, chunks: Iterable[tuple[Sequence[str], FloatArray]], dim: int) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise BulkError("writing .parquet needs pyarrow (pip install pyarrow), or write .npy") from None
    schema = pa.schema([("id", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])
    tmp = out.with_name(out.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for ids, vectors in chunks:
            flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
            embedding = pa.FixedSizeListArray.from_arrays(flat, dim)
            writer.write_table(pa.table([pa.array(list(ids), pa.string()), embedding], schema=schema))
    os.replace(tmp, out)


def embed_file(
    input_path: Path,
    out: Path,
    embedder: BatchEmbedder,
    options: BulkOptions,
    *,
    restart: bool = False,
    keep_parts: bool = False,
    progress: bool = True,
) -> BulkReport:
    """Embed a JSONL catalogue into `out`, reusing finished shards of an earlier run of the same job."""
    if out.suffix not in (".npy", ".parquet"):
        raise BulkError(f"--out must end in .npy or .parquet (got {out.name})")
    if options.shard_items <= 0 or options.batch_items <= 0:
        raise BulkError("shard_items and batch_items must be > 0")
    started = time.monotonic()
    parts = parts_dir(out)
    job = {"format": JOB_FORMAT, "model": embedder.model, "dim": embedder.dim, **options.fingerprint()}
    _prepare_parts(parts, job, restart)
    total = count_rows(input_path)
    shards = reused = 0
    with tqdm(total=total, unit="item", desc=input_path.name, disable=not progress, smoothing=0.1) as bar:
        for shard in read_shards(input_path, options):
            shards += 1
            if _is_done(parts, shard):
                reused += 1
                bar.update(len(shard.ids))
                continue
            _embed_shard(parts, shard, embedder, options.batch_items, bar)
    write_output(out, _load_shards(parts, shards), total, embedder.dim)
    if not keep_parts:
        shutil.rmtree(parts)
    return BulkReport(total, embedder.dim, shards, reused, time.monotonic() - started)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `embed-file` flags (the serving config flags are added by the CLI next to these)."""
    d = BulkOptions()
    parser.add_argument("input", type=Path, help="JSONL catalogue: one {id, text} object per line")
    parser.add_argument("--out", type=Path, required=True, help="output .npy (+ .ids.jsonl) or .parquet")
    parser.add_argument(
        "--address", action="append", default=None, help="embed through this server (repeat for several)"
    )
    parser.add_argument("--text-field", default=d.text_field, help=f"(default {d.text_field!r})")
    parser.add_argument("--id-field", default=d.id_field, help=f"(default {d.id_field!r})")
    parser.add_argument("--shard-items", type=int, default=d.shard_items, help="rows per resumable shard")
    parser.add_argument("--batch-items", type=int, default=d.batch_items, help="texts per model call")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight with --address")
    parser.add_argument("--no-normalize", action="store_true", help="store raw pooled embeddings")
    parser.add_argument("--dimensions", type=int, default=0, help="Matryoshka truncation (0 = full)")
    parser.add_argument("--no-truncate", action="store_true", help="fail on texts over max_tokens")
    parser.add_argument("--restart", action="store_true", help="discard parts of an earlier run")
    parser.add_argument("--keep-parts", action="store_true", help="keep <out>.parts/ after joining")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--ray", action="store_true", help="run on Ray Data (extra `ray`): one ONNX session per actor"
    )
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: start one here)")


def options_from_args(args: argparse.Namespace) -> BulkOptions:
    return BulkOptions(
        text_field=args.text_field,
        id_field=args.id_field,
        shard_items=args.shard_items,
        batch_items=args.batch_items,
        normalize=not args.no_normalize,
        dimensions=args.dimensions,
        truncate=not args.no_truncate,
    )


def run_cli(config: ServerConfig, args: argparse.Namespace) -> int:
    """`streamrec-embedder embed-file`: in-process, through servers (--address), or on Ray (--ray)."""
    options = options_from_args(args)
    if args.ray:
        from embedder.ray_bulk import embed_file_ray

        report = embed_file_ray(
            args.input, args.out, config, options, address=args.ray_address, progress=not args.no_progress
        )
    else:
        embedder: BatchEmbedder = (
            RemoteEmbedder(args.address, options, args.concurrency)
            if args.address
            else LocalEmbedder(config, options)
        )
        try:
            report = embed_file(
                args.input,
                args.out,
                embedder,
                options,
                restart=args.restart,
                keep_parts=args.keep_parts,
                progress=not args.no_progress,
            )
        finally:
            embedder.close()
    rate = report.rows / report.seconds if report.seconds > 0 else 0.0
    print(
        f"{report.rows} rows x {report.dim} -> {args.out} in {report.seconds:.1f}s ({rate:.0f} items/s; "
        f"{report.shards_reused}/{report.shards} shards reused)",
        file=sys.stderr,
    )
    return 0
