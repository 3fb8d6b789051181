"""The batch log: exactly the batches the scheduler ran, in order, readable back for the replay."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from embedder.core.batch_log import BatchLog, read_batch_log
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine, EmbedOptions
from embedder.core.scheduler import Scheduler
from embedder.errors import ConfigError
from tests.support import make_config
from tests.unit.test_scheduler import DIM, FakeModel, limits, rows, run


def test_the_log_holds_the_batches_the_model_got(tmp_path: Path) -> None:
    log = BatchLog(tmp_path / "batches.jsonl")

    async def body() -> None:
        model = FakeModel()
        scheduler = Scheduler(model, limits(max_batch_items=4, max_wait_ms=0), DIM, record=log.record)
        scheduler.start()
        await asyncio.gather(*(scheduler.submit(rows(10 * i, 3, length=2 + i)) for i in range(5)))
        await scheduler.close()
        log.close()
        assert len(model.batches) >= 4  # 15 texts, at most 4 per batch
        assert list(read_batch_log(log.path)) == model.batches

    run(body)
    assert log.batches == len(list(read_batch_log(log.path)))


def test_a_torn_last_line_is_skipped_and_a_closed_log_ignores_batches(tmp_path: Path) -> None:
    log = BatchLog(tmp_path / "batches.jsonl")
    log.record([[101, 7, 102], [101, 102]])
    log.close()
    log.record([[1]])
    with log.path.open("a", encoding="utf-8") as fh:
        fh.write('{"ids": [[101, 5')  # a server killed mid-write
    assert list(read_batch_log(log.path)) == [[[101, 7, 102], [101, 102]]]


def test_model_versions_append_to_one_file_and_are_read_apart(tmp_path: Path) -> None:
    path = tmp_path / "batches.jsonl"
    old, new = BatchLog(path, "sha-old"), BatchLog(path, "sha-new")
    old.record([[1, 2]])
    new.record([[3]])
    old.record([[4]])
    old.close()
    new.close()
    assert list(read_batch_log(path, "sha-old")) == [[[1, 2]], [[4]]]
    assert list(read_batch_log(path, "sha-new")) == [[[3]]]
    assert len(list(read_batch_log(path))) == 3


def test_an_unwritable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batch_log: cannot write .*missing/batches.jsonl"):
        BatchLog(tmp_path / "missing" / "batches.jsonl")


def test_the_engine_logs_the_token_rows_it_embeds(bundle: Bundle, tmp_path: Path) -> None:
    path = tmp_path / "batches.jsonl"
    engine = EmbeddingEngine(bundle, make_config(batch_log=str(path), workers=1))
    texts = ["a quiet family drama", "space documentary about the moon", "cooking show"]

    async def body() -> None:
        engine.start()
        try:
            await engine.embed(texts, EmbedOptions())
        finally:
            await engine.close()

    run(body)
    logged = [row for batch in read_batch_log(path) for row in batch]
    assert sorted(logged) == sorted(engine.tokenizer.encode(texts).ids)
    default = EmbeddingEngine(bundle, make_config(workers=1))
    assert default.batch_log is None  # off by default
    default.close_sync()
