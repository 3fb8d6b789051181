"""The Ray Data path on a local 2-CPU Ray (`ray.init(num_cpus=2)`): the same files as the single-process
path, byte for byte, including the lines a careless reader splits wrongly, and the same errors.

Ray is the `ray` extra, which `make test` installs; this module costs ~10-20 s (Ray start-up included).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from embedder.bulk.files import ids_path
from embedder.bulk.job import BulkError, BulkOptions, LocalEmbedder, embed_file
from embedder.bulk.ray_bulk import embed_file_ray, plan_spans
from embedder.core.bundle import Bundle
from tests.support import make_config, sample_texts


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def tricky_catalogue(path: Path, rows: int) -> None:
    """Integer and string ids, blank lines, CRLF ends, and texts holding U+2028 / U+0085 / form feed
    written raw (ensure_ascii=False): JSON allows them inside strings, `str.splitlines` breaks on them."""
    texts = sample_texts(rows, seed=5)
    with path.open("w", encoding="utf-8", newline="") as f:
        for i, plain in enumerate(texts):
            text = f"{plain}\u2028second line\u0085third\x0cfourth" if i % 50 == 7 else plain
            row = {"id": i if i % 2 else f"sku-{i}", "text": text}
            f.write(json.dumps(row, ensure_ascii=False) + ("\r\n" if i % 10 == 3 else "\n"))
            if i % 97 == 0:
                f.write("\n  \n")


def single_process(bundle: Bundle, catalogue: Path, out: Path, options: BulkOptions) -> None:
    embedder = LocalEmbedder(make_config(bundle=str(bundle.path), workers=1), options)
    try:
        embed_file(catalogue, out, embedder, options, progress=False)
    finally:
        embedder.close()


@pytest.mark.usefixtures("local_ray")
def test_same_output_as_single_process(bundle: Bundle, tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue.jsonl"
    tricky_catalogue(catalogue, 2000)
    options = BulkOptions(shard_items=256)
    spans, rows = plan_spans([catalogue], options.shard_items)
    assert rows == 2000 and len(spans) == 8  # several spans, so both actors work and order matters

    single, on_ray = tmp_path / "single.npy", tmp_path / "ray.npy"
    single_process(bundle, catalogue, single, options)
    config = make_config(bundle=str(bundle.path))
    report = embed_file_ray(catalogue, on_ray, config, options, progress=False)
    assert (report.rows, report.dim) == (2000, 384)
    assert ids_path(on_ray).read_bytes() == ids_path(single).read_bytes()
    np.testing.assert_array_equal(np.load(on_ray), np.load(single))


@pytest.mark.usefixtures("local_ray")
def test_parquet_and_matryoshka(bundle: Bundle, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    catalogue = tmp_path / "catalogue.jsonl"
    tricky_catalogue(catalogue, 300)
    options = BulkOptions(shard_items=64, dimensions=64, normalize=False)
    single, on_ray = tmp_path / "single.parquet", tmp_path / "ray.parquet"
    single_process(bundle, catalogue, single, options)
    embed_file_ray(catalogue, on_ray, make_config(bundle=str(bundle.path)), options, actors=2, progress=False)
    assert pq.read_table(on_ray).equals(pq.read_table(single))
    assert pq.read_table(on_ray).schema.field("embedding").type.list_size == 64


@pytest.mark.usefixtures("local_ray")
def test_bad_line_is_named_like_the_single_process_path(bundle: Bundle, tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue.jsonl"
    tricky_catalogue(catalogue, 100)
    with catalogue.open("a") as f:
        f.write('{"id": 1}\n')
    lineno = len(catalogue.read_bytes().split(b"\n")) - 1
    config = make_config(bundle=str(bundle.path))
    out = tmp_path / "e.npy"
    with pytest.raises(BulkError, match=rf"catalogue.jsonl:{lineno}: needs a string field 'text'$"):
        single_process(bundle, catalogue, out, BulkOptions(shard_items=32))
    with pytest.raises(BulkError, match=rf"catalogue.jsonl:{lineno}: needs a string field 'text'$"):
        embed_file_ray(catalogue, out, config, BulkOptions(shard_items=32), progress=False)
    assert not out.exists()
