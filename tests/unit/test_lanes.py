"""Priority lanes: which requests are bulk, how many batches each lane may run, and the scheduler giving
an interactive batch a slot while bulk batches hold all of theirs (a fake model; real tasks)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np

from embedder.config import ServerConfig
from embedder.core.lanes import BULK, INTERACTIVE, Slots, classify
from tests.unit.test_scheduler import DIM, limits, rows, run, settle, started


def test_a_request_is_bulk_from_bulk_min_chars_on() -> None:
    assert classify(16_383, 16_384) == INTERACTIVE
    assert classify(16_384, 16_384) == BULK
    assert classify(10**6, 0) == INTERACTIVE  # 0 = lanes off: everything is interactive
    assert classify(0, 1) == INTERACTIVE  # a request announced without characters (`submit`)


def test_the_default_keeps_item_requests_interactive_and_long_floods_bulk() -> None:
    """32 or 64 item texts (20-40 words, ~200 characters each) stay interactive; 512 texts cut at the
    tokenizer's prefix bound (1,024 characters for 128 kept tokens) are bulk."""
    default = ServerConfig().bulk_min_chars
    rng = random.Random(3)
    for n in (32, 64):
        item_chars = sum(len(" ".join(["word"] * rng.randint(20, 40))) + 40 for _ in range(n))
        assert classify(item_chars, default) == INTERACTIVE, item_chars
    assert classify(512 * 1024, default) == BULK


def test_slots_keep_one_for_the_interactive_lane() -> None:
    slots = Slots(per_lane=2, lanes_on=True)
    slots.take(BULK)
    slots.take(BULK)
    assert not slots.free(BULK) and slots.free(INTERACTIVE)  # bulk at its share; the spare is free
    slots.take(INTERACTIVE)
    assert not slots.free(INTERACTIVE) and slots.busy == 3
    slots.give(BULK)
    assert slots.free(BULK)  # one bulk batch ended: 2 of 3 slots in use, 1 of bulk's 2
    off = Slots(per_lane=2, lanes_on=False)
    off.take(INTERACTIVE)
    off.take(INTERACTIVE)
    assert not off.free(INTERACTIVE) and off.total == 2  # lanes off: exactly `workers`, as before


class LaneModel:
    """Records the lane of each batch; bulk batches hold until released (a flood keeping its slots)."""

    def __init__(self) -> None:
        self.started: list[tuple[str, list[list[int]]]] = []
        self.release_bulk = asyncio.Event()

    async def __call__(self, batch: list[list[int]], lone: bool, lane: str) -> Any:
        self.started.append((lane, batch))
        if lane == BULK:
            await self.release_bulk.wait()
        return np.array([[r[0], len(r)] for r in batch], dtype=np.float32)

    def started_in(self, lane: str) -> int:
        return sum(1 for started_lane, _ in self.started if started_lane == lane)


def test_an_interactive_batch_runs_while_bulk_batches_hold_every_bulk_slot() -> None:
    async def body() -> None:
        model = LaneModel()
        lim = limits(max_batch_items=4, max_wait_ms=0, max_concurrent_batches=2, bulk_min_chars=1000)
        scheduler = started(model, lim)
        bulk = []
        for i in range(3):  # 3 bulk requests of 8 texts: batches enough for every bulk slot and more
            reservation = scheduler.reserve(8, chars=5000)
            assert reservation.lane == BULK
            bulk.append(asyncio.ensure_future(reservation.submit(rows(100 * (i + 1), 8))))
        assert await settle(lambda: model.started_in(BULK) == 2)
        assert not await settle(lambda: model.started_in(BULK) > 2)  # bulk is at its share: 2 of 3 slots
        small = scheduler.reserve(2, chars=60)
        assert small.lane == INTERACTIVE
        result = await asyncio.wait_for(small.submit(rows(7, 2)), timeout=5)  # not behind the flood
        assert result.embeddings[:, 0].tolist() == [7, 8]
        assert model.started[-1] == (INTERACTIVE, rows(7, 2))  # its own batch: no bulk texts in it
        model.release_bulk.set()
        for i, done in enumerate(await asyncio.gather(*bulk)):
            assert done.embeddings[:, 0].tolist() == list(range(100 * (i + 1), 100 * (i + 1) + 8))
        assert all(len(batch) <= 4 for _, batch in model.started)
        await scheduler.close()

    run(body)


def test_a_lone_bulk_job_uses_every_slot() -> None:
    """No interactive work: bulk runs `max_concurrent_batches` batches at once, as any work did before
    lanes (no throughput lost to the interactive lane's spare)."""

    async def body() -> None:
        model = LaneModel()
        lim = limits(max_batch_items=2, max_wait_ms=0, max_concurrent_batches=2, bulk_min_chars=1)
        scheduler = started(model, lim)
        job = asyncio.ensure_future(scheduler.reserve(8, chars=10).submit(rows(0, 8)))
        assert await settle(lambda: model.started_in(BULK) == 2)
        model.release_bulk.set()
        assert (await job).embeddings.shape == (8, DIM)
        await scheduler.close()

    run(body)
