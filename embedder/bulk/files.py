"""The files of a bulk job: JSONL catalogue lines in, `.npy` (+ ids) or `.parquet` out.

Shared by the single-process path (`embedder.bulk.job`) and the Ray path (`embedder.bulk.ray_bulk`), so
both read the same rows and write the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from embedder.core.tokenizer import lone_surrogate
from embedder.errors import EmbedderError

FloatArray = npt.NDArray[np.float32]
OUTPUT_SUFFIXES = (".npy", ".parquet")


class BulkError(EmbedderError):
    """Bad input line, unusable output path, or parts left by a job with other settings."""


def parse_line(raw: bytes, where: str, text_field: str, id_field: str) -> tuple[str, str] | None:
    """(id, text) of one JSONL line; None for a blank line. Ids are returned as strings.

    `where` (`file:line`) starts every error, so a bad row in a million-line catalogue can be found.
    """
    if not raw.strip():
        return None
    try:
        line = raw.decode("utf-8-sig")  # -sig: a byte order mark at the start of the file is fine
    except UnicodeDecodeError as exc:
        raise BulkError(
            f"{where}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
        ) from None
    try:
        obj = json.loads(line)
    except ValueError:
        raise BulkError(f"{where}: not a JSON object") from None
    if not isinstance(obj, dict):
        raise BulkError(f"{where}: not a JSON object")
    text, ident = obj.get(text_field), obj.get(id_field)
    if not isinstance(text, str):
        raise BulkError(f"{where}: needs a string field {text_field!r}")
    if not text:
        # The model refuses empty texts; say which row, not which position in some batch.
        raise BulkError(f"{where}: field {text_field!r} is empty")
    if not isinstance(ident, str | int) or isinstance(ident, bool):
        raise BulkError(f"{where}: needs a string or integer field {id_field!r}")
    _check_unicode(text, text_field, where)
    _check_unicode(str(ident), id_field, where)
    return str(ident), text


def _check_unicode(value: str, name: str, where: str) -> None:
    """A JSON escape such as "\ud800" is valid JSON but decodes to a lone surrogate, which the tokenizer
    (or a parquet string column) cannot take."""
    if (at := lone_surrogate(value)) is not None:
        raise BulkError(
            f"{where}: field {name!r} holds a lone surrogate (U+{ord(value[at]):04X} at character "
            f"{at + 1}); strings must be valid Unicode"
        )


def open_catalogue(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise BulkError(f"cannot read {path}: {exc.strerror}") from None


def count_rows(path: Path) -> int:
    """Non-blank lines: the rows both paths will embed (blank lines are skipped by `parse_line`)."""
    with open_catalogue(path) as f:
        return sum(1 for raw in f if raw.strip())


def check_output_path(out: Path) -> None:
    if out.suffix not in OUTPUT_SUFFIXES:
        raise BulkError(f"--out must end in .npy or .parquet (got {out.name})")


def ids_path(out: Path) -> Path:
    """Where the ids of a `.npy` output go: `embeddings.npy` -> `embeddings.ids.jsonl`."""
    return out.with_name(out.stem + ".ids.jsonl")


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_output(out: Path, chunks: Iterable[tuple[Sequence[str], FloatArray]], rows: int, dim: int) -> None:
    """Write (ids, vectors) chunks in order to `out` (.npy + ids file, or .parquet), atomically.

    Raises `BulkError` (and leaves `out` untouched) unless the chunks hold exactly `rows` x `dim`.
    """
    check_output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    checked = _checked(chunks, rows, dim)
    if out.suffix == ".parquet":
        _write_parquet(out, checked, dim)
        return
    tmp = out.with_name(out.name + ".tmp")
    tmp_ids = out.with_name(ids_path(out).name + ".tmp")
    if rows == 0:  # numpy cannot memory-map zero bytes
        with tmp.open("wb") as f:
            np.save(f, np.zeros((0, dim), dtype=np.float32))
        tmp_ids.write_text("".join(json.dumps(i) + "\n" for ids, _ in checked for i in ids))
    else:
        # A memmap keeps a catalogue larger than memory off the heap.
        matrix = np.lib.format.open_memmap(  # type: ignore[no-untyped-call]
            tmp, mode="w+", dtype=np.float32, shape=(rows, dim)
        )
        start = 0
        with tmp_ids.open("w") as id_file:
            for ids, vectors in checked:
                matrix[start : start + len(ids)] = vectors
                start += len(ids)
                id_file.writelines(json.dumps(i) + "\n" for i in ids)
        matrix.flush()
        del matrix
    os.replace(tmp_ids, ids_path(out))
    os.replace(tmp, out)


def _checked(
    chunks: Iterable[tuple[Sequence[str], FloatArray]], rows: int, dim: int
) -> Iterator[tuple[Sequence[str], FloatArray]]:
    """The chunks, failing as soon as they disagree with `rows` x `dim` (before the output is renamed)."""
    start = 0
    for ids, vectors in chunks:
        if start + len(ids) > rows or vectors.shape != (len(ids), dim):
            raise BulkError(f"chunk of {len(ids)} ids and {vectors.shape} vectors at row {start} of {rows}")
        start += len(ids)
        yield ids, vectors
    if start != rows:
        raise BulkError(f"got {start} rows, expected {rows}")


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
