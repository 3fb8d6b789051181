"""DynamicBatcher: every flush rule, ordering, grouping by length, the queue bound, failures.

The model here is a stand-in that returns, for each row, [first token id, row length], so a caller can
check it got its own rows back in order. Everything else (event loop, timing, tasks) is real.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from embedder.core.scheduler import BatchLimits, BatchResult, DynamicBatcher
from embedder.errors import DeadlineExceededError, InferenceError, OverloadedError, ShuttingDownError

DIM = 2


class FakeModel:
    """Records each batch (as token rows); optionally blocks on a gate or raises."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[list[int]]] = []
        self.delay_s = delay_s
        self.gate: asyncio.Event | None = None
        self.fail_on: Callable[[list[list[int]]], bool] = lambda rows: False
        self.rows_short = False

    async def __call__(self, rows: list[list[int]]) -> Any:
        self.batches.append(rows)
        if self.gate is not None:
            await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_on(rows):
            raise RuntimeError("boom")
        out = np.array([[r[0], len(r)] for r in rows], dtype=np.float32)
        return out[:-1] if self.rows_short else out


def limits(**kw: Any) -> BatchLimits:
    base = {
        "max_batch_items": 1000,
        "max_batch_tokens": 100_000,
        "max_wait_ms": 60_000.0,
        "max_queued_items": 10_000,
        "max_concurrent_batches": 1,
    }
    base.update(kw)
    return BatchLimits(**base)


def rows(first: int, n: int, length: int = 5) -> list[list[int]]:
    """n rows whose first token is first, first+1, ... (so results identify their rows)."""
    return [[first + i] + [0] * (length - 1) for i in range(n)]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


def started(model: FakeModel, lim: BatchLimits) -> DynamicBatcher:
    batcher = DynamicBatcher(model, lim, DIM)
    batcher.start()
    return batcher


def test_flushes_on_max_batch_items_without_waiting() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = started(model, limits(max_batch_items=4))
        t0 = time.monotonic()
        result = await batcher.submit(rows(0, 8))
        assert time.monotonic() - t0 < 2.0  # max_wait_ms is 60 s: only the item count can have flushed
        assert [len(b) for b in model.batches] == [4, 4]
        assert result.embeddings[:, 0].tolist() == list(range(8))
        await batcher.close()

    run(body)


def test_flushes_on_max_batch_tokens_counting_padding() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = started(model, limits(max_batch_tokens=40))
        batcher.expect_arrival()  # another caller is on its way, so a part-full batch is worth holding
        # 7 rows of 10 tokens: 4 x 10 = 40 padded tokens fit a batch, 5 x 10 would not.
        task = asyncio.create_task(batcher.submit(rows(0, 7, length=10)))
        await asyncio.sleep(0.3)
        assert [len(b) for b in model.batches] == [4]  # the other 3 (30 tokens) wait for max_wait_ms
        task.cancel()
        await batcher.close()

    run(body)


def test_padded_tokens_use_the_longest_row() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = started(model, limits(max_batch_tokens=60, max_wait_ms=0))
        # One 30-token row + 1-token rows: padded cost is 30 x n, so only 2 rows fit in 60.
        await batcher.submit([[1] * 30, [2], [3], [4]])
        for batch in model.batches:
            assert max(len(r) for r in batch) * len(batch) <= 60
        assert sum(len(b) for b in model.batches) == 4
        await batcher.close()

    run(body)


def test_flushes_after_max_wait_ms() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = started(model, limits(max_wait_ms=150))
        batcher.expect_arrival()  # announced but never comes: only max_wait_ms can flush
        t0 = time.monotonic()
        await batcher.submit(rows(0, 3))
        waited = time.monotonic() - t0
        assert 0.14 <= waited < 2.0
        assert [len(b) for b in model.batches] == [3]
        await batcher.close()

    run(body)


def test_flushes_at_once_when_no_more_texts_are_coming() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = started(model, limits(max_wait_ms=60_000))
        t0 = time.monotonic()
        await batcher.submit(rows(0, 3))
        assert time.monotonic() - t0 < 2.0
        batcher.expect_arrival()
        late = asyncio.create_task(batcher.submit(rows(10, 2)))
        await asyncio.sleep(0.1)
        assert not late.done()  # held for the announced caller ...
        batcher.arrival_cancelled()  # ... until it is known not to come
        await late
        assert [len(b) for b in model.batches] == [3, 2]
        await batcher.close()

    run(body)


def test_merges_callers_into_one_batch_within_max_wait() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = started(model, limits(max_wait_ms=1000))
        for _ in range(5):
            batcher.expect_arrival()
        results = await asyncio.gather(*(batcher.submit(rows(10 * i, 2), announced=True) for i in range(5)))
        assert [len(b) for b in model.batches] == [10]
        for i, result in enumerate(results):
            assert result.embeddings[:, 0].tolist() == [10 * i, 10 * i + 1]
        await batcher.close()

    run(body)


def test_results_return_to_the_right_caller_in_order() -> None:
    async def body() -> None:
        rng = random.Random(7)
        model = FakeModel(delay_s=0.001)
        batcher = started(model, limits(max_batch_items=16, max_batch_tokens=200, max_wait_ms=1))

        async def caller(i: int) -> None:
            await asyncio.sleep(rng.random() * 0.02)
            n = rng.randint(1, 40)
            mine = [[1000 * i + j] + [0] * rng.randint(0, 20) for j in range(n)]
            result = await batcher.submit(mine)
            assert result.embeddings[:, 0].tolist() == [1000 * i + j for j in range(n)]
            assert result.embeddings[:, 1].tolist() == [len(r) for r in mine]

        await asyncio.gather(*(caller(i) for i in range(50)))
        assert len(model.batches) > 5
        for batch in model.batches:
            assert len(batch) <= 16
            assert max(len(r) for r in batch) * len(batch) <= 200
        await batcher.close()

    run(body)


def test_groups_items_by_length() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = started(model, limits(max_batch_items=4, max_wait_ms=50))
        mixed = [[i] * (3 if i % 2 == 0 else 20) for i in range(1, 9)]  # short, long, short, long, ...
        result = await batcher.submit(mixed)
        assert sorted(tuple({len(r) for r in b}) for b in model.batches) == [(3,), (20,)]
        assert result.embeddings[:, 0].tolist() == [r[0] for r in mixed]
        await batcher.close()

    run(body)


def test_oldest_item_is_never_starved_by_grouping() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = started(model, limits(max_batch_items=2, max_wait_ms=0))
        model.gate = asyncio.Event()
        first = asyncio.create_task(batcher.submit([[1] * 3]))  # occupies the only worker
        await asyncio.sleep(0.05)
        long_one = asyncio.create_task(batcher.submit([[2] * 30]))
        await asyncio.sleep(0.01)
        short_rows = [[3] * 3 for _ in range(6)]
        shorts = asyncio.create_task(batcher.submit(short_rows))
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(first, long_one, shorts)
        assert model.batches[1][0] == [2] * 30  # the long item was oldest, so it went next
        await batcher.close()

    run(body)


def test_queue_bound_rejects_at_once() -> None:
    async def body() -> None:
        model = FakeModel()
        model.gate = asyncio.Event()
        batcher = started(model, limits(max_queued_items=10, max_batch_items=1, max_wait_ms=0))
        busy = asyncio.create_task(batcher.submit(rows(0, 1)))  # taken by the only worker
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.submit(rows(100, 10)))
        await asyncio.sleep(0.05)
        assert batcher.queued_items == 10
        t0 = time.monotonic()
        with pytest.raises(OverloadedError, match="max_queued_items=10"):
            await batcher.submit(rows(200, 1))
        assert time.monotonic() - t0 < 0.1
        model.gate.set()
        await asyncio.gather(busy, queued)
        assert batcher.queued_items == 0
        await batcher.submit(rows(300, 10))  # room again once the queue drained
        await batcher.close()

    run(body)


def test_inference_error_fails_only_the_request_that_caused_it() -> None:
    async def body() -> None:
        model = FakeModel()
        model.fail_on = lambda batch: any(r[0] == 666 for r in batch)
        batcher = started(model, limits(max_wait_ms=1000))
        for _ in range(3):
            batcher.expect_arrival()
        outcomes = await asyncio.gather(
            batcher.submit(rows(0, 2), announced=True),
            batcher.submit([[666]], announced=True),
            batcher.submit(rows(10, 3), announced=True),
            return_exceptions=True,
        )
        # One merged batch failed; each request was re-run alone and only the poisoned one failed.
        assert len(model.batches[0]) == 6 and len(model.batches) == 4
        assert isinstance(outcomes[1], InferenceError)
        assert "boom" not in str(outcomes[1])  # the model's own message stays in the log
        first, third = outcomes[0], outcomes[2]
        assert isinstance(first, BatchResult) and isinstance(third, BatchResult)
        assert first.embeddings[:, 0].tolist() == [0, 1]
        assert third.embeddings[:, 0].tolist() == [10, 11, 12]
        ok = await batcher.submit(rows(20, 2))  # the batcher survives a failed batch
        assert ok.embeddings[:, 0].tolist() == [20, 21]
        await batcher.close()

    run(body)


def test_request_split_across_batches_fails_if_any_part_fails() -> None:
    async def body() -> None:
        model = FakeModel()
        model.fail_on = lambda batch: any(r[0] == 5 for r in batch)
        batcher = started(model, limits(max_batch_items=4, max_wait_ms=0))
        with pytest.raises(InferenceError):
            await batcher.submit(rows(0, 8))
        await batcher.close()

    run(body)


def test_wrong_row_count_is_an_inference_error() -> None:
    async def body() -> None:
        model = FakeModel()
        model.rows_short = True
        batcher = started(model, limits(max_wait_ms=0))
        with pytest.raises(InferenceError, match="rows for"):
            await batcher.submit(rows(0, 3))
        await batcher.close()

    run(body)


def test_deadline_passed_in_queue_is_not_run() -> None:
    async def body() -> None:
        model = FakeModel()
        model.gate = asyncio.Event()
        batcher = started(model, limits(max_wait_ms=0, max_batch_items=1))
        busy = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0.02)
        late = asyncio.create_task(batcher.submit(rows(50, 1), deadline=time.monotonic() + 0.05))
        await asyncio.sleep(0.1)
        model.gate.set()
        with pytest.raises(DeadlineExceededError):
            await late
        await busy
        assert [r[0] for b in model.batches for r in b] == [0]
        await batcher.close()

    run(body)


def test_cancelled_caller_items_are_skipped() -> None:
    async def body() -> None:
        model = FakeModel()
        model.gate = asyncio.Event()
        batcher = started(model, limits(max_wait_ms=0, max_batch_items=1))
        busy = asyncio.create_task(batcher.submit(rows(0, 1)))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(batcher.submit(rows(50, 3)))
        await asyncio.sleep(0.02)
        gone.cancel()
        model.gate.set()
        await busy
        await batcher.submit(rows(90, 1))
        assert [r[0] for b in model.batches for r in b] == [0, 90]
        assert batcher.queued_items == 0
        await batcher.close()

    run(body)


def test_close_fails_queued_requests_and_refuses_new_ones() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = started(model, limits(max_wait_ms=60_000))
        batcher.expect_arrival()
        waiting = asyncio.create_task(batcher.submit(rows(0, 2)))
        await asyncio.sleep(0.02)
        await batcher.close()
        with pytest.raises(ShuttingDownError):
            await waiting
        with pytest.raises(ShuttingDownError):
            await batcher.submit(rows(0, 1))

    run(body)


def test_parallel_batches_up_to_max_concurrent() -> None:
    async def body() -> None:
        running = 0
        peak = 0

        async def model(batch: list[list[int]]) -> Any:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1
            return np.zeros((len(batch), DIM), dtype=np.float32)

        batcher = DynamicBatcher(
            model, limits(max_batch_items=2, max_wait_ms=0, max_concurrent_batches=3), DIM
        )
        batcher.start()
        await asyncio.gather(*(batcher.submit(rows(i, 2)) for i in range(12)))
        assert peak == 3
        await batcher.close()

    run(body)
