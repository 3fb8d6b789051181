"""`streamrec-embedder embed-file`: real subprocess runs, a SIGKILL mid-way and a resume, outputs checked
against one uninterrupted run and against in-process embeddings; through a server; bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from embedder.bulk.files import ids_path
from embedder.bulk.job import BulkError, BulkOptions, LocalEmbedder, embed_file, parts_dir
from embedder.cli import main
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine, EmbedOptions
from tests.support import ServerThread, make_config, sample_texts

REPO = Path(__file__).resolve().parents[2]


def write_catalogue(path: Path, rows: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`rows` JSONL rows (string and integer ids, a blank line every 100 rows); returns ids and texts."""
    texts = sample_texts(rows, seed=seed)
    ids = [str(i) if i % 3 == 0 else f"item-{i}" for i in range(rows)]
    with path.open("w") as f:
        for i, (ident, text) in enumerate(zip(ids, texts, strict=True)):
            f.write(json.dumps({"id": i if i % 3 == 0 else ident, "text": text}) + "\n")
            if i % 100 == 99:
                f.write("\n")
    return ids, texts


def in_process(engine: EmbeddingEngine, texts: list[str], batch: int = 64) -> np.ndarray:
    return np.concatenate(
        [engine.embed_in_process(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "embedder.cli", "embed-file", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)


def read_ids(out: Path) -> list[str]:
    return [json.loads(line) for line in ids_path(out).read_text().splitlines()]


def test_kill_and_resume_equals_one_run(bundle: Bundle, reference: EmbeddingEngine, tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue.jsonl"
    ids, texts = write_catalogue(catalogue, 12_000)
    common = ["--bundle", str(bundle.path), "--shard-items", "256", "--workers", "1"]
    whole = tmp_path / "whole" / "embeddings.npy"
    done = run_cli(str(catalogue), "--out", str(whole), *common)
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr and "item/s" in done.stderr  # the progress bar
    assert "0/47 shards reused" in done.stderr

    # Interrupt: SIGKILL once a few shards are on disk, the way a preempted node stops.
    out = tmp_path / "resumed" / "embeddings.npy"
    cmd = [sys.executable, "-m", "embedder.cli", "embed-file", str(catalogue), "--out", str(out), *common]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(parts_dir(out).glob("shard-*.json"))) < 3 and proc.poll() is None:
        assert time.monotonic() < deadline, "no shard written in 120 s"
        time.sleep(0.002)
    proc.kill()
    proc.wait(10)
    assert not out.exists(), "the job finished before it could be killed: make the catalogue larger"
    kept = len(list(parts_dir(out).glob("shard-*.json")))

    resumed = run_cli(str(catalogue), "--out", str(out), *common)
    assert resumed.returncode == 0, resumed.stderr
    reused = int(re.search(r"(\d+)/47 shards reused", resumed.stderr).group(1))  # type: ignore[union-attr]
    assert reused >= kept >= 3
    assert not parts_dir(out).exists()

    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (len(texts), reference.manifest.dim)
    np.testing.assert_array_equal(got, np.load(whole))
    assert read_ids(out) == read_ids(whole) == ids
    np.testing.assert_allclose(got, in_process(reference, texts), atol=1e-6)


def test_parquet_output(bundle: Bundle, reference: EmbeddingEngine, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")  # the `ray` extra brings pyarrow; make test installs it
    catalogue = tmp_path / "c.jsonl"
    ids, texts = write_catalogue(catalogue, 300, seed=1)
    out = tmp_path / "e.parquet"
    done = run_cli(str(catalogue), "--out", str(out), "--bundle", str(bundle.path), "--dimensions", "64")
    assert done.returncode == 0, done.stderr
    table = pq.read_table(out)
    assert table.column_names == ["id", "embedding"]
    assert table.column("id").to_pylist() == ids
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    opts = EmbedOptions(dimensions=64)
    want = np.concatenate([reference.embed_in_process(texts[i : i + 64], opts) for i in range(0, 300, 64)])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_through_a_server(
    start_server: Callable[..., ServerThread], reference: EmbeddingEngine, tmp_path: Path
) -> None:
    server = start_server(max_texts_per_request=50)
    catalogue = tmp_path / "c.jsonl"
    ids, texts = write_catalogue(catalogue, 500, seed=2)
    out = tmp_path / "e.npy"
    code = main(
        ["embed-file", str(catalogue), "--out", str(out), "--address", server.address, "--no-progress"]
    )
    assert code == 0
    assert read_ids(out) == ids
    np.testing.assert_allclose(np.load(out), in_process(reference, texts), atol=1e-5)


def test_torn_shard_is_embedded_again(bundle: Bundle, tmp_path: Path) -> None:
    catalogue = tmp_path / "c.jsonl"
    write_catalogue(catalogue, 600, seed=3)
    out = tmp_path / "e.npy"
    options = BulkOptions(shard_items=200)
    embedder = LocalEmbedder(make_config(bundle=str(bundle.path), workers=1), options)
    try:
        embed_file(catalogue, out, embedder, options, keep_parts=True, progress=False)
        first = np.load(out)
        shard = parts_dir(out) / "shard-000001.npy"
        shard.write_bytes(shard.read_bytes()[:1000])  # a write cut short by a crash, sidecar intact
        report = embed_file(catalogue, out, embedder, options, progress=False)
    finally:
        embedder.close()
    assert (report.shards, report.shards_reused) == (3, 2)
    np.testing.assert_array_equal(np.load(out), first)


def test_other_settings_are_refused_not_mixed(bundle: Bundle, tmp_path: Path) -> None:
    catalogue = tmp_path / "c.jsonl"
    write_catalogue(catalogue, 50, seed=4)
    out = tmp_path / "e.npy"
    base = ["embed-file", str(catalogue), "--out", str(out), "--bundle", str(bundle.path), "--no-progress"]
    assert main([*base, "--keep-parts"]) == 0
    with pytest.raises(BulkError, match="other settings"):
        embedder = LocalEmbedder(make_config(bundle=str(bundle.path), workers=1), BulkOptions(dimensions=64))
        try:
            embed_file(catalogue, out, embedder, BulkOptions(dimensions=64), progress=False)
        finally:
            embedder.close()
    assert main([*base, "--dimensions", "64", "--restart"]) == 0
    assert np.load(out).shape == (50, 64)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "c.jsonl:3: not a JSON object"),
        (b'["a list"]', "c.jsonl:3: not a JSON object"),
        (b'{"id": "x"}', "c.jsonl:3: needs a string field 'text'"),
        (b'{"id": "x", "text": ""}', "c.jsonl:3: field 'text' is empty"),
        (b'{"id": true, "text": "t"}', "c.jsonl:3: needs a string or integer field 'id'"),
        # Issue 14, defect 5: a valid JSON escape of a lone surrogate used to crash the tokenizer with a
        # traceback and no line number; a Latin-1 line was "not a JSON object".
        (
            b'{"id": "x", "text": "a\\ud800b"}',
            "c.jsonl:3: field 'text' holds a lone surrogate (U+D800 at character 2); "
            "strings must be valid Unicode",
        ),
        (
            b'{"id": "\\udc80", "text": "t"}',
            "c.jsonl:3: field 'id' holds a lone surrogate (U+DC80 at character 1); "
            "strings must be valid Unicode",
        ),
        (b'{"id": "x", "text": "caf\xe9"}', "c.jsonl:3: not valid UTF-8 (byte 0xe9 at column 25)"),
    ],
)
def test_bad_line_named_by_file_and_line(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: bytes, message: str
) -> None:
    catalogue = tmp_path / "c.jsonl"
    catalogue.write_bytes(b'{"id": 1, "text": "fine"}\n\n' + line + b"\n")
    out = tmp_path / "e.npy"
    assert main(["embed-file", str(catalogue), "--out", str(out), "--bundle", str(bundle.path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("streamrec-embedder: error:") and err.endswith(message)
    assert not out.exists()


def test_usage_errors(bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalogue = tmp_path / "c.jsonl"
    write_catalogue(catalogue, 5)
    base = ["embed-file", str(catalogue), "--bundle", str(bundle.path), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "e.csv")]) == 1
    assert "--out must end in .npy or .parquet" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "e.npy"), "--batch-items", "600"]) == 1
    assert "--batch-items must be in 1..512" in capsys.readouterr().err
    missing = ["embed-file", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "e.npy")]
    assert main(missing) == 1  # said before any model is loaded: no --bundle needed to hear it
    assert "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert (
        main(["embed-file", str(empty), "--out", str(tmp_path / "z.npy"), "--bundle", str(bundle.path)]) == 0
    )
    assert np.load(tmp_path / "z.npy").shape == (0, 384) and read_ids(tmp_path / "z.npy") == []


def test_model_picks_the_version_through_a_server_and_in_process(
    start_server: Callable[..., ServerThread],
    bundle: Bundle,
    bundle_v2: Bundle,
    reference: EmbeddingEngine,
    tmp_path: Path,
) -> None:
    server = start_server([bundle, bundle_v2])  # the default is v2; --model pins v1
    catalogue = tmp_path / "c.jsonl"
    _, texts = write_catalogue(catalogue, 120, seed=4)
    pinned = f"{bundle.manifest.name}@{bundle.manifest.version}"
    remote, local = tmp_path / "remote.npy", tmp_path / "local.npy"
    common = ["--no-progress", "--model", pinned]
    assert (
        main(["embed-file", str(catalogue), "--out", str(remote), "--address", server.address, *common]) == 0
    )
    both = ["--bundle", str(bundle_v2.path), "--bundle", str(bundle.path), "--workers", "1"]
    assert main(["embed-file", str(catalogue), "--out", str(local), *both, *common]) == 0
    for out in (remote, local):
        np.testing.assert_allclose(np.load(out), in_process(reference, texts), atol=1e-5)
