"""Bulk catalogue embedding: JSONL in, `.npy` (+ ids) or `.parquet` out, with a progress bar and resume.

    streamrec-embedder embed-file catalogue.jsonl --out embeddings.npy            # in-process (ONNX here)
    streamrec-embedder embed-file catalogue.jsonl --out e.npy --address lb:50051  # through running servers

(the flags are in `embedder.bulk.cli`; the Ray runner, `embedder.bulk.ray_bulk`, builds on this module).

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

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np
from tqdm import tqdm

from embedder.bulk.files import (
    BulkError,
    FloatArray,
    atomic_write,
    check_output_path,
    count_rows,
    open_catalogue,
    parse_line,
    write_output,
)
from embedder.client import ClientOptions, EmbedderClient
from embedder.config import ServerConfig
from embedder.core.bundle import load_bundle
from embedder.core.engine import EmbeddingEngine, EmbedOptions
from embedder.errors import EmbedderError
from embedder.options import RequestOptions

__all__ = ["BulkError", "BulkOptions", "BulkReport", "LocalEmbedder", "RemoteEmbedder", "embed_file"]
JOB_FORMAT = 1
JOB_FILE = "job.json"


@dataclass(frozen=True, kw_only=True)
class BulkOptions(RequestOptions):
    """What a bulk job reads and how it embeds. `batch_items`, concurrency and `cache` (through servers
    only) do not change the vectors."""

    text_field: str = "text"
    id_field: str = "id"
    shard_items: int = 8192
    batch_items: int = 64

    def embed_options(self) -> EmbedOptions:
        return EmbedOptions(**self.request_fields())

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


def clip(texts: Sequence[str], max_chars: int, truncate: bool) -> list[str]:
    """With truncation on, cut texts to the server's character limit: far past max_tokens, so no change."""
    return [t[:max_chars] for t in texts] if truncate else list(texts)


def check_batch_items(options: BulkOptions, config: ServerConfig) -> None:
    """In-process batches go to the engine whole, so they obey the server's per-request limit."""
    if not 0 < options.batch_items <= config.max_texts_per_request:
        raise BulkError(
            f"--batch-items must be in 1..{config.max_texts_per_request} (max_texts_per_request), "
            f"got {options.batch_items}"
        )


class LocalEmbedder:
    """In-process: the serving engine's tokenizer and ONNX sessions, one batch per worker thread."""

    def __init__(self, config: ServerConfig, options: BulkOptions) -> None:
        check_batch_items(options, config)
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

    def __init__(
        self, addresses: Sequence[str], options: BulkOptions, concurrency: int = 4, model: str = ""
    ) -> None:
        """`model`: "name" or "name@version" on the servers ("" = their default); the resume fingerprint
        records the version that answered, so a rerun against another version is refused."""
        client_options = ClientOptions(**options.request_fields(), timeout_s=120.0, max_attempts=8)
        self.client = EmbedderClient(addresses, client_options, model=model)
        try:
            info = self.client.model_info()
        except grpc.RpcError as exc:
            self.client.close()
            raise _server_error(exc) from None
        self._options = options
        self._max_chars = info.limits.max_text_chars or 20000
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="bulk-embed")
        self.model = {"name": info.name, "version": info.version, "sha256": info.sha256}
        self.dim = options.dimensions or info.dim
        # The whole job runs on the version that answered, even if the servers' default moves meanwhile:
        # vectors of two versions must not mix in one output.
        pinned = f"{info.name}@{info.version}"
        self.client.options = dataclasses.replace(self.client.options, model=pinned)

    def embed(self, texts: list[str]) -> FloatArray:
        try:
            return self.client.embed(clip(texts, self._max_chars, self._options.truncate))
        except grpc.RpcError as exc:
            raise _server_error(exc) from None

    def map(self, batches: Sequence[list[str]]) -> Iterator[FloatArray]:
        return self._pool.map(self.embed, batches)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()


def _server_error(exc: grpc.RpcError) -> BulkError:
    """The server's status as a one-line error (the client already retried what can be retried)."""
    code, details = getattr(exc, "code", lambda: None)(), getattr(exc, "details", lambda: "")()
    return BulkError(f"server answered {getattr(code, 'name', code)}: {details}")


@dataclass(frozen=True)
class Shard:
    index: int
    ids: list[str]
    texts: list[str]
    lines: list[int]  # 1-based line number of each row, for errors
    digest: str


def read_shards(path: Path, options: BulkOptions) -> Iterator[Shard]:
    """Shards of `shard_items` rows in file order; the digest covers the raw lines of the shard."""
    ids: list[str] = []
    texts: list[str] = []
    lines: list[int] = []
    digest = hashlib.blake2b(digest_size=16)
    index = 0
    with open_catalogue(path) as f:
        for lineno, raw in enumerate(f, start=1):
            row = parse_line(raw, f"{path}:{lineno}", options.text_field, options.id_field)
            if row is None:
                continue
            ids.append(row[0])
            texts.append(row[1])
            lines.append(lineno)
            digest.update(raw.rstrip(b"\r\n") + b"\n")
            if len(ids) == options.shard_items:
                yield Shard(index, ids, texts, lines, digest.hexdigest())
                ids, texts, lines, index = [], [], [], index + 1
                digest = hashlib.blake2b(digest_size=16)
    if ids:
        yield Shard(index, ids, texts, lines, digest.hexdigest())


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


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
    atomic_write(job_file, json.dumps(job, sort_keys=True).encode())


def _shard_files(parts: Path, index: int) -> tuple[Path, Path]:
    return parts / f"shard-{index:06d}.npy", parts / f"shard-{index:06d}.json"


def _is_done(parts: Path, shard: Shard, dim: int) -> bool:
    """Both files there, the same input lines, and an array of the right shape (not a torn write)."""
    array_file, meta_file = _shard_files(parts, shard.index)
    if not (array_file.exists() and meta_file.exists()):
        return False
    meta = json.loads(meta_file.read_text())
    if meta.get("digest") != shard.digest or meta.get("rows") != len(shard.ids):
        return False
    try:
        return bool(np.load(array_file, mmap_mode="r").shape == (len(shard.ids), dim))
    except (OSError, ValueError):
        return False


def _embed_shard(
    path: Path, parts: Path, shard: Shard, embedder: BatchEmbedder, batch_items: int, *, bar: tqdm[Any]
) -> None:
    starts = range(0, len(shard.texts), batch_items)
    batches = [shard.texts[i : i + batch_items] for i in starts]
    rows: list[FloatArray] = []
    results = embedder.map(batches)
    for start, batch in zip(starts, batches, strict=True):
        try:
            rows.append(next(results))
        except EmbedderError as exc:
            first, last = shard.lines[start], shard.lines[start + len(batch) - 1]
            raise BulkError(f"{path} lines {first}..{last} (texts[0] is line {first}): {exc}") from None
        bar.update(len(batch))
    array_file, meta_file = _shard_files(parts, shard.index)
    tmp = array_file.with_name(array_file.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, np.concatenate(rows).astype(np.float32, copy=False))
    tmp.replace(array_file)
    # The sidecar is written last: it is what marks the shard as done.
    meta = {"digest": shard.digest, "rows": len(shard.ids), "ids": shard.ids}
    atomic_write(meta_file, json.dumps(meta).encode())


def _load_shards(parts: Path, count: int) -> Iterator[tuple[list[str], FloatArray]]:
    for index in range(count):
        array_file, meta_file = _shard_files(parts, index)
        yield json.loads(meta_file.read_text())["ids"], np.load(array_file)


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
    check_output_path(out)
    if options.shard_items <= 0 or options.batch_items <= 0:
        raise BulkError("shard_items and batch_items must be > 0")
    started = time.monotonic()
    total = count_rows(input_path)
    parts = parts_dir(out)
    job = {"format": JOB_FORMAT, "model": embedder.model, "dim": embedder.dim, **options.fingerprint()}
    _prepare_parts(parts, job, restart)
    shards = reused = 0
    with tqdm(total=total, unit="item", desc=input_path.name, disable=not progress, smoothing=0.1) as bar:
        for shard in read_shards(input_path, options):
            shards += 1
            if _is_done(parts, shard, embedder.dim):
                reused += 1
                bar.update(len(shard.ids))
                continue
            _embed_shard(input_path, parts, shard, embedder, options.batch_items, bar=bar)
    write_output(out, _load_shards(parts, shards), total, embedder.dim)
    if not keep_parts:
        shutil.rmtree(parts)
    return BulkReport(total, embedder.dim, shards, reused, time.monotonic() - started)
