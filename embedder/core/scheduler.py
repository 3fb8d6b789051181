"""Dynamic batcher: merges texts from all callers into padded batches for the inference workers.

A batch is flushed when a worker is free and any of these holds: `max_batch_items` texts are queued,
the queued texts would fill `max_batch_tokens` padded tokens (longest x count), the oldest text has
waited `max_wait_ms`, or no more texts are on their way. Callers announce texts that are on their way
(being tokenized) with `expect_arrival()`; waiting for batch-mates only pays while some are coming, so a
lone caller on an idle server is not charged `max_wait_ms`. An announced request reserves its queue
slots up front, so an overloaded server refuses it at once, before spending CPU on tokenizing it.

A batch starts from the oldest queued text (so nothing starves) and is filled with the texts closest to
it in length, to cut padding. The queue is bounded: a request that does not fit is rejected at once with
`OverloadedError`. If inference raises on a batch of several requests, each is re-run alone, so only
the request that breaks the model gets an `InferenceError`; nobody is left waiting. Texts whose caller
is gone (cancelled, deadline passed) are dropped before inference and reported to the observer with a
reason.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from embedder.errors import (
    DeadlineExceededError,
    EmbedderError,
    InferenceError,
    InferenceTimeoutError,
    OverloadedError,
    ShuttingDownError,
)

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
# Embeds a batch of unpadded token rows; returns one row per input row.
RunBatch = Callable[[list[list[int]]], Awaitable[FloatArray]]


class BatchObserver(Protocol):
    """Receives one call per batch run (the metrics module implements it)."""

    def observe_batch(self, items: int, padded_tokens: int, real_tokens: int, inference_s: float) -> None: ...

    def set_queued_items(self, items: int) -> None: ...

    def observe_dropped(self, items: int, reason: str) -> None: ...

    def observe_failed_batch(self, items: int, reason: str) -> None: ...


# Why queued texts were dropped before inference (label values of the dropped-items metric).
DROP_DEADLINE = "deadline"
DROP_CANCELLED = "cancelled"
DROP_FAILED = "failed"  # another part of the same request failed, or the batcher broke
DROP_SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class BatchLimits:
    max_batch_items: int
    max_batch_tokens: int
    max_wait_ms: float
    max_queued_items: int
    # How many batches may run at once (= inference workers).
    max_concurrent_batches: int


@dataclass
class BatchResult:
    embeddings: FloatArray
    queue_s: float
    inference_s: float


class _Request:
    __slots__ = ("batches", "deadline", "future", "inference_s", "queue_s", "remaining", "rows")

    def __init__(self, future: asyncio.Future[BatchResult], n: int, dim: int, deadline: float | None) -> None:
        self.future = future
        self.rows: FloatArray = np.empty((n, dim), dtype=np.float32)
        self.remaining = n
        self.deadline = deadline
        self.queue_s = 0.0
        self.inference_s = 0.0
        self.batches: set[int] = set()


@dataclass(slots=True, eq=False)  # identity equality: deque.remove must find this very item
class _Item:
    request: _Request
    index: int
    ids: list[int]
    enqueued_at: float
    taken: bool = False


class DynamicBatcher:
    """Use from one event loop: `start()`, then `await submit(rows)` from any number of tasks."""

    def __init__(
        self,
        run_batch: RunBatch,
        limits: BatchLimits,
        dim: int,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run_batch = run_batch
        self.limits = limits
        self._dim = dim
        self._observer = observer
        self._clock = clock
        self._fifo: deque[_Item] = deque()
        self._by_length: dict[int, deque[_Item]] = {}
        self._queued = 0
        self._busy = 0
        self._arriving = 0
        self._reserved = 0
        self._broken = False
        self._closing = False
        self._batch_ids = itertools.count()
        self._accepting = True
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued_items(self) -> int:
        return self._queued

    @property
    def running_batches(self) -> int:
        """Batches handed to inference and not yet finished (the caller's own included)."""
        return self._busy

    def start(self) -> None:
        """Start the dispatcher task on the running loop."""
        self._wake = asyncio.Event()
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name="embedder-batcher")
        self._dispatcher.add_done_callback(self._dispatcher_ended)

    def expect_arrival(self, items: int = 0) -> None:
        """A request is on its way (e.g. being tokenized): worth waiting up to `max_wait_ms` for.

        Its `items` queue slots are reserved now (pass the same number to `submit(reserved=)`), so a
        request that cannot fit is refused here with `OverloadedError`, before any work is done on it.
        """
        self._check_room(items)
        self._arriving += 1
        self._reserved += items

    def arrival_cancelled(self, items: int = 0) -> None:
        """An announced request will not come (tokenization failed or was cancelled)."""
        self._arriving -= 1
        self._reserved -= items
        if self._wake is not None:
            self._wake.set()

    def _check_room(self, n: int) -> None:
        if self._broken:
            raise InferenceError("batcher stopped unexpectedly; see the server log")
        if not self._accepting or self._wake is None:
            raise ShuttingDownError("server is shutting down; retry on another replica")
        if self._queued + self._reserved + n > self.limits.max_queued_items:
            raise OverloadedError(
                f"queue full: {self._queued + self._reserved} texts queued, {n} more would exceed "
                f"max_queued_items={self.limits.max_queued_items}; retry with backoff"
            )

    async def submit(
        self,
        rows: Sequence[list[int]],
        deadline: float | None = None,
        announced: bool = False,
        reserved: int = 0,
    ) -> BatchResult:
        """Queue one request's token rows; return its embeddings in input order.

        `deadline` is on this batcher's clock (`time.monotonic` by default). `announced=True` when this
        request was announced with `expect_arrival()`; `reserved` is the slot count reserved there.
        """
        if announced:
            self._arriving -= 1
        self._reserved -= reserved
        n = len(rows)
        self._check_room(n)
        assert self._wake is not None  # _check_room refuses a batcher that was never started
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        request = _Request(future, n, self._dim, deadline)
        if n == 0:
            return BatchResult(request.rows, 0.0, 0.0)
        now = self._clock()
        if deadline is not None and now > deadline:
            self._dropped(n, DROP_DEADLINE)
            raise DeadlineExceededError("deadline passed before the request reached the batch queue")
        for i, ids in enumerate(rows):
            item = _Item(request, i, ids, now)
            self._fifo.append(item)
            self._by_length.setdefault(len(ids), deque()).append(item)
        self._set_queued(self._queued + n)
        self._wake.set()
        return await future

    def stop_accepting(self) -> None:
        """New `submit` calls raise `ShuttingDownError`; queued work still runs."""
        self._accepting = False

    async def close(self) -> None:
        """Stop the dispatcher, wait for running batches, fail whatever is still queued."""
        self._accepting = False
        self._closing = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        left = [item for item in self._fifo if not item.taken]
        for item in left:
            if not item.request.future.done():
                item.request.future.set_exception(
                    ShuttingDownError("server shut down before this request ran")
                )
        if left:
            self._dropped(len(left), DROP_SHUTDOWN)
        self._fifo.clear()
        self._by_length.clear()
        self._set_queued(0)

    # -- dispatcher -----------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        assert self._wake is not None  # set by start(); internal invariant, not input validation
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush_ready()
            except Exception as exc:  # a bug here must not leave callers waiting forever
                log.exception("batcher dispatch failed; failing queued requests")
                self._fail_queued(exc)

    def _fail_queued(self, exc: Exception) -> None:
        left = [item for item in self._fifo if not item.taken]
        self._fail(left, exc, count_batch=False)
        self._fifo.clear()
        self._by_length.clear()
        self._set_queued(0)
        if left:
            self._dropped(len(left), DROP_FAILED)

    def _dispatcher_ended(self, task: asyncio.Task[None]) -> None:
        """Watchdog: if the dispatcher dies outside `close()`, fail what is queued and refuse new work."""
        if self._closing:
            return
        self._broken = True
        exc = None if task.cancelled() else task.exception()
        log.critical("batcher dispatcher ended unexpectedly; refusing new work", exc_info=exc)
        self._fail_queued(InferenceError("batcher stopped unexpectedly"))

    async def _flush_ready(self) -> None:
        while self._busy < self.limits.max_concurrent_batches:
            oldest = self._oldest_live()
            if oldest is None:
                return
            wait_s = oldest.enqueued_at + self.limits.max_wait_ms / 1000.0 - self._clock()
            if wait_s > 0 and self._arriving > 0 and self._accepting and not self._full():
                await self._sleep_or_wake(wait_s)
                continue
            self._launch(self._take_batch(oldest))

    async def _sleep_or_wake(self, seconds: float) -> None:
        assert self._wake is not None
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    def _oldest_live(self) -> _Item | None:
        """Head of the FIFO, dropping items already taken or whose caller is gone or out of time."""
        now = self._clock()
        while self._fifo:
            item = self._fifo[0]
            if item.taken:
                self._fifo.popleft()
                continue
            if self._drop_if_dead(item, now):
                continue
            return item
        return None

    def _drop_if_dead(self, item: _Item, now: float) -> bool:
        request = item.request
        late = request.deadline is not None and now > request.deadline
        if not request.future.done() and late:
            request.future.set_exception(
                DeadlineExceededError("deadline passed while the request was queued")
            )
        if request.future.done():
            self._remove(item)
            cancelled = request.future.cancelled()
            self._dropped(1, DROP_DEADLINE if late else DROP_CANCELLED if cancelled else DROP_FAILED)
            return True
        return False

    def _remove(self, item: _Item) -> None:
        item.taken = True
        bucket = self._by_length[len(item.ids)]
        bucket.remove(item)
        if not bucket:
            del self._by_length[len(item.ids)]
        self._set_queued(self._queued - 1)

    def _full(self) -> bool:
        """True when the queued texts already fill a batch by count or by padded tokens."""
        if self._queued >= self.limits.max_batch_items:
            return True
        longest = max(self._by_length, default=0)
        return longest * self._queued >= self.limits.max_batch_tokens

    def _take_batch(self, oldest: _Item) -> list[_Item]:
        """The oldest item plus the items nearest to it in length, within both batch limits."""
        self._remove(oldest)
        batch = [oldest]
        longest = len(oldest.ids)
        now = self._clock()
        for length in sorted(self._by_length, key=lambda n: (abs(n - len(oldest.ids)), n)):
            for item in list(self._by_length.get(length, ())):
                if len(batch) >= self.limits.max_batch_items:
                    return batch
                if max(longest, length) * (len(batch) + 1) > self.limits.max_batch_tokens:
                    break
                if self._drop_if_dead(item, now):
                    continue
                self._remove(item)
                batch.append(item)
                longest = max(longest, length)
        return batch

    def _launch(self, batch: list[_Item]) -> None:
        self._busy += 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Item]) -> None:
        try:
            await self._run_once(batch, isolate=True)
        finally:
            self._busy -= 1
            if self._wake is not None:
                self._wake.set()

    async def _run_once(self, batch: list[_Item], isolate: bool) -> None:
        """Run one batch. If it fails and holds several requests, each request is re-run alone, so a
        text that breaks the model fails only its own caller, not its batch-mates (a stuck batch is
        not re-run: that would double the time its callers wait)."""
        batch_id = next(self._batch_ids)
        started = self._clock()
        try:
            out = await self._run_batch([item.ids for item in batch])
            if out.shape[0] != len(batch):
                raise InferenceError(f"model returned {out.shape[0]} rows for {len(batch)} texts")
        except Exception as exc:
            groups = _by_request(batch)
            if not isolate or len(groups) < 2 or isinstance(exc, InferenceTimeoutError):
                self._fail(batch, exc)
                return
            log.warning(
                "a batch of %d texts from %d requests failed; re-running each request alone",
                len(batch),
                len(groups),
                exc_info=exc,
            )
            self._count_failed(len(batch), exc)
            for group in groups:
                if not group[0].request.future.done():
                    await self._run_once(group, isolate=False)
            return
        finished = self._clock()
        try:
            self._deliver(batch, out, batch_id, started, finished)
        except Exception as exc:  # e.g. a failing observer: callers must still get an answer
            self._fail(batch, exc)

    def _count_failed(self, items: int, exc: Exception) -> None:
        if self._observer is not None:
            reason = "timeout" if isinstance(exc, InferenceTimeoutError) else "error"
            self._observer.observe_failed_batch(items, reason)

    def _fail(self, batch: list[_Item], exc: Exception, count_batch: bool = True) -> None:
        log.error("inference failed on a batch of %d texts", len(batch), exc_info=exc)
        if count_batch:
            self._count_failed(len(batch), exc)
        error = (
            exc
            if isinstance(exc, EmbedderError)
            else InferenceError(f"inference failed: {type(exc).__name__}")
        )
        for item in batch:
            if not item.request.future.done():
                item.request.future.set_exception(error)

    def _deliver(
        self, batch: list[_Item], out: FloatArray, batch_id: int, started: float, finished: float
    ) -> None:
        inference_s = finished - started
        waits = [started - item.enqueued_at for item in batch]
        for item, row, wait in zip(batch, out, waits, strict=True):
            request = item.request
            if request.future.done():
                continue
            request.rows[item.index] = row
            request.remaining -= 1
            if batch_id not in request.batches:
                request.batches.add(batch_id)
                request.inference_s += inference_s
            request.queue_s = max(request.queue_s, wait)
            if request.remaining == 0:
                request.future.set_result(BatchResult(request.rows, request.queue_s, request.inference_s))
        if self._observer is not None:
            longest = max(len(item.ids) for item in batch)
            real = sum(len(item.ids) for item in batch)
            self._observer.observe_batch(len(batch), longest * len(batch), real, inference_s)

    def _dropped(self, items: int, reason: str) -> None:
        if self._observer is not None:
            self._observer.observe_dropped(items, reason)

    def _set_queued(self, value: int) -> None:
        self._queued = value
        if self._observer is not None:
            self._observer.set_queued_items(value)


def _by_request(batch: list[_Item]) -> list[list[_Item]]:
    """The batch's items grouped by the request they belong to, in batch order."""
    groups: dict[int, list[_Item]] = {}
    for item in batch:
        groups.setdefault(id(item.request), []).append(item)
    return list(groups.values())
