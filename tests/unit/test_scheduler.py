"""Scheduler: tasks around the pure queue — admission by Reservation, flushing on time and on arrival,
parallel batches, failure isolation, deadlines, cancellation, close. No sleeps: events, loop yields
(`settle`) and an injected clock.

The model here is a stand-in that returns, for each row, [first token id, row length], so a caller can
check it got its own rows back in order. Everything else (event loop, tasks) is real.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from embedder.core.scheduler import BatchLimits, BatchResult, Scheduler
from embedder.errors import DeadlineExceededError, InferenceError, OverloadedError, ShuttingDownError

DIM = 2


class FakeModel:
    """Records each batch (as token rows); optionally blocks on a gate or raises."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []
        self.lone: list[bool] = []
        self.lanes: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail_on: Callable[[list[list[int]]], bool] = lambda rows: False
        self.rows_short = False

    async def __call__(self, rows: list[list[int]], lone: bool, lane: str) -> Any:
        self.batches.append(rows)
        self.lone.append(lone)
        self.lanes.append(lane)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_on(rows):
            raise RuntimeError("boom")
        out = np.array([[r[0], len(r)] for r in rows], dtype=np.float32)
        return out[:-1] if self.rows_short else out


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


async def settle(condition: Callable[[], bool] = lambda: False, turns: int = 200) -> bool:
    """Let the loop run (zero-length yields, no timed sleep) until `condition` holds or `turns` pass."""
    for _ in range(turns):
        if condition():
            return True
        await asyncio.sleep(0)
    return condition()


def started(model: Any, lim: BatchLimits, clock: Callable[[], float] = time.monotonic) -> Scheduler:
    scheduler = Scheduler(model, lim, DIM, clock=clock)
    scheduler.start()
    return scheduler


def test_flushes_on_max_batch_items_without_waiting() -> None:
    async def body() -> None:
        model = FakeModel()
        scheduler = started(model, limits(max_batch_items=4))
        with scheduler.reserve(0):  # more is coming: only the item count can flush (max_wait is 60 s)
            result = await scheduler.submit(rows(0, 8))
        assert [len(b) for b in model.batches] == [4, 4]
        assert result.embeddings[:, 0].tolist() == list(range(8))
        await scheduler.close()

    run(body)


def test_holds_a_part_full_batch_while_more_is_coming() -> None:
    async def body() -> None:
        model = FakeModel()
        scheduler = started(model, limits(max_batch_tokens=40))
        coming = scheduler.reserve(0)  # another caller is on its way, so a part-full batch is worth holding
        # 7 rows of 10 tokens: 4 x 10 = 40 padded tokens fill a batch, 5 x 10 would not.
        task = asyncio.create_task(scheduler.submit(rows(0, 7, length=10)))
        assert await settle(lambda: len(model.batches) == 1)
        assert not await settle(lambda: len(model.batches) > 1)  # the other 3 (30 tokens) wait ...
        assert scheduler.queued_items == 3
        coming.release()  # ... until the announced caller is known not to come
        result = await task
        assert [len(b) for b in model.batches] == [4, 3]
        assert result.embeddings[:, 0].tolist() == list(range(7))
        await scheduler.close()

    run(body)


def test_flushes_after_max_wait_ms() -> None:
    async def body() -> None:
        model = FakeModel()
        scheduler = started(model, limits(max_wait_ms=30))
        with scheduler.reserve(0):  # announced but never comes: only max_wait_ms can flush
            t0 = time.monotonic()
            await scheduler.submit(rows(0, 3))
            assert time.monotonic() - t0 >= 0.03
        assert [len(b) for b in model.batches] == [3]
        await scheduler.close()

    run(body)


def test_a_lone_caller_is_not_charged_max_wait_ms() -> None:
    async def body() -> None:
        model = FakeModel()
        scheduler = started(model, limits())  # max_wait_ms is 60 s
        result = await scheduler.submit(rows(0, 3))
        assert result.embeddings.shape == (3, DIM)
        assert model.lone == [True]  # nothing else running or queued: the inline policy may take it
        await scheduler.close()

    run(body)


def test_merges_callers_into_one_batch_while_they_arrive() -> None:
    async def body() -> None:
        model = FakeModel()
        scheduler = started(model, limits())
        reservations = [scheduler.reserve(2) for _ in range(5)]
        results = await asyncio.gather(*(r.submit(rows(10 * i, 2)) for i, r in enumerate(reservations)))
        assert [len(b) for b in model.batches] == [10]
        for i, result in enumerate(results):
            assert result.embeddings[:, 0].tolist() == [10 * i, 10 * i + 1]
        await scheduler.close()

    run(body)


def test_results_return_to_the_right_caller_in_order() -> None:
    async def body() -> None:
        rng = random.Random(7)
        model = FakeModel()
        scheduler = started(model, limits(max_batch_items=16, max_batch_tokens=200, max_wait_ms=1))

        async def caller(i: int) -> None:
            await settle(turns=rng.randint(0, 20))
            n = rng.randint(1, 40)
            mine = [[1000 * i + j] + [0] * rng.randint(0, 20) for j in range(n)]
            result = await scheduler.submit(mine)
            assert result.embeddings[:, 0].tolist() == [1000 * i + j for j in range(n)]
            assert result.embeddings[:, 1].tolist() == [len(r) for r in mine]

        await asyncio.gather(*(caller(i) for i in range(50)))
        assert len(model.batches) > 5
        for batch in model.batches:
            assert len(batch) <= 16
            assert max(len(r) for r in batch) * len(batch) <= 200
        await scheduler.close()

    run(body)


def test_a_long_item_is_not_starved_by_many_short_ones() -> None:
    async def body() -> None:
        model = FakeModel()
        model.gate = asyncio.Event()
        scheduler = started(model, limits(max_batch_items=2, max_wait_ms=0))
        first = asyncio.create_task(scheduler.submit([[1] * 3]))  # occupies the only worker
        assert await settle(lambda: len(model.batches) == 1)
        long_one = asyncio.create_task(scheduler.submit([[2] * 30]))
        assert await settle(lambda: scheduler.queued_items == 1)
        short_rows = [[3] * 3 for _ in range(20)]
        shorts = asyncio.create_task(scheduler.submit(short_rows))
        assert await settle(lambda: scheduler.queued_items == 21)
        model.gate.set()
        await asyncio.gather(first, long_one, shorts)
        served = [batch[0][0] for batch in model.batches]
        # Fair queuing by tokens: the long item (30 tokens) goes once ~30 tokens of shorts have run,
        # well before the last of the 60 tokens of shorts that were queued after it.
        assert 2 in served[1:-2]
        await scheduler.close()

    run(body)


def test_queue_bound_refuses_a_reservation_at_once() -> None:
    async def body() -> None:
        model = FakeModel()
        model.gate = asyncio.Event()
        scheduler = started(model, limits(max_queued_items=10, max_batch_items=1, max_wait_ms=0))
        busy = asyncio.create_task(scheduler.submit(rows(0, 1)))  # taken by the only worker
        assert await settle(lambda: len(model.batches) == 1)
        queued = asyncio.create_task(scheduler.submit(rows(100, 8)))
        assert await settle(lambda: scheduler.queued_items == 8)
        held = scheduler.reserve(2)  # 8 queued + 2 reserved: full
        with pytest.raises(OverloadedError, match="max_queued_items=10"):
            scheduler.reserve(1)
        held.release()  # the slots come back
        scheduler.reserve(2).release()
        model.gate.set()
        await asyncio.gather(busy, queued)
        assert scheduler.queued_items == 0
        await scheduler.submit(rows(300, 10))  # room again once the queue drained
        await scheduler.close()

    run(body)


def test_a_reservation_is_used_once_and_released_on_any_exit() -> None:
    async def body() -> None:
        scheduler = started(FakeModel(), limits(max_queued_items=4))
        with pytest.raises(ValueError, match="tokenizer broke"), scheduler.reserve(4):
            raise ValueError("tokenizer broke")  # e.g. tokenization failed: the slots come back
        reservation = scheduler.reserve(4)
        await reservation.submit(rows(0, 4))
        with pytest.raises(RuntimeError, match="already used"):
            await reservation.submit(rows(0, 4))
        await scheduler.close()

    run(body)


def test_inference_error_fails_only_the_request_that_caused_it() -> None:
    async def body() -> None:
        model = FakeModel()
        model.fail_on = lambda batch: any(r[0] == 666 for r in batch)
        scheduler = started(model, limits())
        a, b, c = (scheduler.reserve(n) for n in (2, 1, 3))
        outcomes = await asyncio.gather(
            a.submit(rows(0, 2)), b.submit([[666]]), c.submit(rows(10, 3)), return_exceptions=True
        )
        # One merged batch failed; each request was re-run alone and only the poisoned one failed.
        assert len(model.batches[0]) == 6 and len(model.batches) == 4
        assert isinstance(outcomes[1], InferenceError)
        assert "boom" not in str(outcomes[1])  # the model's own message stays in the log
        first, third = outcomes[0], outcomes[2]
        assert isinstance(first, BatchResult) and isinstance(third, BatchResult)
        assert first.embeddings[:, 0].tolist() == [0, 1]
        assert third.embeddings[:, 0].tolist() == [10, 11, 12]
        ok = await scheduler.submit(rows(20, 2))  # the scheduler survives a failed batch
        assert ok.embeddings[:, 0].tolist() == [20, 21]
        await scheduler.close()

    run(body)


def test_request_split_across_batches_fails_if_any_part_fails() -> None:
    async def body() -> None:
        model = FakeModel()
        model.fail_on = lambda batch: any(r[0] == 5 for r in batch)
        scheduler = started(model, limits(max_batch_items=4, max_wait_ms=0))
        with pytest.raises(InferenceError):
            await scheduler.submit(rows(0, 8))
        await scheduler.close()

    run(body)


def test_wrong_row_count_is_an_inference_error() -> None:
    async def body() -> None:
        model = FakeModel()
        model.rows_short = True
        scheduler = started(model, limits(max_wait_ms=0))
        with pytest.raises(InferenceError, match="rows for"):
            await scheduler.submit(rows(0, 3))
        await scheduler.close()

    run(body)


def test_deadline_passed_in_queue_is_not_run() -> None:
    async def body() -> None:
        model = FakeModel()
        model.gate = asyncio.Event()
        clock = FakeClock()
        scheduler = started(model, limits(max_wait_ms=0, max_batch_items=1), clock)
        busy = asyncio.create_task(scheduler.submit(rows(0, 1)))
        assert await settle(lambda: len(model.batches) == 1)
        late = asyncio.create_task(scheduler.submit(rows(50, 1), deadline=clock.now + 0.05))
        assert await settle(lambda: scheduler.queued_items == 1)
        clock.now += 0.1  # its deadline passes while it waits for the busy worker
        model.gate.set()
        with pytest.raises(DeadlineExceededError):
            await late
        await busy
        assert [r[0] for b in model.batches for r in b] == [0]
        await scheduler.close()

    run(body)


def test_cancelled_caller_items_are_skipped() -> None:
    async def body() -> None:
        model = FakeModel()
        model.gate = asyncio.Event()
        scheduler = started(model, limits(max_wait_ms=0, max_batch_items=1))
        busy = asyncio.create_task(scheduler.submit(rows(0, 1)))
        assert await settle(lambda: len(model.batches) == 1)
        gone = asyncio.create_task(scheduler.submit(rows(50, 3)))
        assert await settle(lambda: scheduler.queued_items == 3)
        gone.cancel()
        model.gate.set()
        await busy
        await scheduler.submit(rows(90, 1))
        assert [r[0] for b in model.batches for r in b] == [0, 90]
        assert scheduler.queued_items == 0
        await scheduler.close()

    run(body)


def test_close_fails_queued_requests_and_refuses_new_ones() -> None:
    async def body() -> None:
        model = FakeModel()
        scheduler = started(model, limits())
        scheduler.reserve(0)  # held: the queued request waits for max_wait_ms (60 s)
        waiting = asyncio.create_task(scheduler.submit(rows(0, 2)))
        assert await settle(lambda: scheduler.queued_items == 2)
        await scheduler.close()
        with pytest.raises(ShuttingDownError):
            await waiting
        with pytest.raises(ShuttingDownError):
            await scheduler.submit(rows(0, 1))
        with pytest.raises(ShuttingDownError):
            scheduler.reserve(1)

    run(body)


def test_parallel_batches_up_to_max_concurrent() -> None:
    async def body() -> None:
        running = 0
        release = asyncio.Event()

        async def model(batch: list[list[int]], lone: bool, lane: str) -> Any:
            nonlocal running
            running += 1
            await release.wait()
            running -= 1
            return np.zeros((len(batch), DIM), dtype=np.float32)

        scheduler = started(model, limits(max_batch_items=2, max_wait_ms=0, max_concurrent_batches=3))
        calls = asyncio.gather(*(scheduler.submit(rows(i, 2)) for i in range(12)))
        assert await settle(lambda: running == 3)
        assert not await settle(lambda: running > 3)
        assert scheduler.running_batches == 3
        release.set()
        await calls
        await scheduler.close()

    run(body)
