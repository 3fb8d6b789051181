"""The scheduler: drives the batch queue on the event loop and hands batches to the inference workers.

The rules of what goes into a batch and when are in `embedder.core.queue` (pure, clock injected); the
queue bound is in `embedder.core.admission`. This module owns the tasks: one dispatcher that waits until
a batch is due and a worker is free, one task per running batch, and a watchdog that fails every waiting
caller if the dispatcher ever dies.

A caller holds one `Reservation` (from `reserve(n)`) while its request is on its way, and submits its
token rows through it; leaving the `with` block without submitting gives the slots back. If inference
raises on a batch of several requests, each is re-run alone, so only the request that breaks the model
gets an `InferenceError`; nobody is left waiting. Texts whose caller is gone (cancelled, deadline
passed) are dropped before inference and reported to the observer with a reason.

Priority lanes (core/lanes.py): each lane has a queue of its own, so a batch holds one lane's texts
(its fill pulls other requests' texts of that lane only: no interactive text waits in a low-priority
batch); the interactive lane is served first whenever `Slots` has room for it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from embedder.core.admission import Admission, BatchResult, Reservation
from embedder.core.lanes import LANES, Slots, classify
from embedder.core.queue import (
    DROP_CANCELLED,
    DROP_DEADLINE,
    DROP_FAILED,
    DROP_SHUTDOWN,
    BatchQueue,
    Item,
    QueueLimits,
    Request,
)
from embedder.errors import (
    DeadlineExceededError,
    EmbedderError,
    InferenceError,
    InferenceTimeoutError,
    ShuttingDownError,
)

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
# Embeds a batch of unpadded token rows of one lane; returns one row per input row. `lone` is True when
# no other batch is running or queued (the engine's inline policy uses it).
RunBatch = Callable[[list[list[int]], bool, str], Awaitable[FloatArray]]
# Sees every batch's unpadded token rows just before it runs (the batch log, core/batch_log.py).
RecordBatch = Callable[[list[list[int]]], None]


class BatchObserver(Protocol):
    """Receives one call per batch run (the metrics module implements it)."""

    def observe_batch(
        self, items: int, padded_tokens: int, real_tokens: int, inference_s: float, lane: str
    ) -> None: ...

    def set_queued_items(self, items: int) -> None: ...

    def observe_dropped(self, items: int, reason: str) -> None: ...

    def observe_failed_batch(self, items: int, reason: str) -> None: ...


@dataclass(frozen=True)
class BatchLimits:
    max_batch_items: int
    max_batch_tokens: int
    max_wait_ms: float
    max_queued_items: int
    # Batches of one lane that may run at once (= inference workers; lanes on: one more in all, Slots).
    max_concurrent_batches: int
    # Characters admitted but not yet tokenized (admission.py); 0 = no bound.
    max_tokenizing_chars: int = 0
    min_padding_efficiency: float = 0.0
    # A request tokenizing at least this many characters is bulk (core/lanes.py); 0 = lanes off.
    bulk_min_chars: int = 0

    def queue_limits(self) -> QueueLimits:
        return QueueLimits(
            self.max_batch_items, self.max_batch_tokens, self.max_wait_ms, self.min_padding_efficiency
        )


class Scheduler:
    """Use from one event loop: `start()`, then `reserve(n)` / `submit(rows)` from any number of tasks."""

    def __init__(
        self,
        run_batch: RunBatch,
        limits: BatchLimits,
        dim: int,
        observer: BatchObserver | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        record: RecordBatch | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._record = record
        self.limits = limits
        self._dim = dim
        self._observer = observer
        self._clock = clock
        self._queues = {lane: BatchQueue(limits.queue_limits(), clock) for lane in LANES}
        self._admission = Admission(limits.max_queued_items, limits.max_tokenizing_chars)
        self._futures: dict[Request, asyncio.Future[BatchResult]] = {}
        self._slots = Slots(limits.max_concurrent_batches, lanes_on=limits.bulk_min_chars > 0)
        self._broken = False
        self._closing = False
        self._batch_ids = itertools.count()
        self._accepting = True
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def queued_items(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    @property
    def running_batches(self) -> int:
        """Batches handed to inference and not yet finished (the caller's own included)."""
        return self._slots.busy

    def start(self) -> None:
        """Start the dispatcher task on the running loop."""
        self._wake = asyncio.Event()
        self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name="embedder-scheduler")
        self._dispatcher.add_done_callback(self._dispatcher_ended)

    def reserve(self, items: int, chars: int = 0) -> Reservation:
        """Hold `items` queue slots for a request on its way (e.g. being tokenized), which is also worth
        waiting up to `max_wait_ms` for, and `chars` characters of the tokenizer's backlog; `chars` also
        decides the request's lane (`Reservation.lane`). Refused at once (`OverloadedError`) if they
        cannot fit."""
        self._check_open()
        lane = classify(chars, self.limits.bulk_min_chars)
        self._admission.claim(items, self.queued_items, chars, lane)
        return Reservation(self, items, chars, lane)

    async def submit(self, rows: Sequence[list[int]], deadline: float | None = None) -> BatchResult:
        """Queue a request that was never announced (nothing to wait for): `reserve` + `submit` in one."""
        return await self.reserve(len(rows)).submit(rows, deadline)

    def _untokenize(self, chars: int) -> None:
        self._admission.tokenized(chars)

    def _settle(self, items: int, lane: str) -> None:
        self._admission.settle(items, lane)
        if self._wake is not None:
            self._wake.set()

    def _check_open(self) -> None:
        if self._broken:
            raise InferenceError("scheduler stopped unexpectedly; see the server log")
        if not self._accepting or self._wake is None:
            raise ShuttingDownError("server is shutting down; retry on another replica")

    async def _enqueue(self, rows: Sequence[list[int]], deadline: float | None, lane: str) -> BatchResult:
        n = len(rows)
        self._check_open()
        self._admission.check(n, self.queued_items)
        assert self._wake is not None  # _check_open refuses a scheduler that was never started
        request = Request(n, self._dim, deadline)
        if n == 0:
            return BatchResult(request.rows, 0.0, 0.0)
        if request.expired(self._clock()):
            self._dropped(n, DROP_DEADLINE)
            raise DeadlineExceededError("deadline passed before the request reached the batch queue")
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._futures[request] = future
        future.add_done_callback(lambda f: self._request_done(request, f))
        self._queues[lane].push(request, rows)
        self._set_queued()
        self._wake.set()
        return await future

    def _request_done(self, request: Request, future: asyncio.Future[BatchResult]) -> None:
        """The caller has its answer or is gone: its texts still queued are dropped, not run."""
        del self._futures[request]
        if request.gone is None and request.remaining > 0:
            request.gone = DROP_CANCELLED if future.cancelled() else DROP_FAILED

    def stop_accepting(self) -> None:
        """New `reserve`/`submit` calls raise `ShuttingDownError`; queued work still runs."""
        self._accepting = False

    async def close(self) -> None:
        """Stop the dispatcher, wait for running batches, fail whatever is still queued."""
        self._accepting = False
        self._closing = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        left = self._clear_queues()
        self._fail(left, ShuttingDownError("server shut down before this request ran"))
        if left:
            self._dropped(len(left), DROP_SHUTDOWN)
        self._set_queued()

    # -- dispatcher -----------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        assert self._wake is not None  # set by start(); internal invariant, not input validation
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush_ready()
            except Exception as exc:  # a bug here must not leave callers waiting forever
                log.exception("scheduler dispatch failed; failing queued requests")
                self._fail_queued(exc)

    def _clear_queues(self) -> list[Item]:
        return [item for queue in self._queues.values() for item in queue.clear()]

    def _fail_queued(self, exc: Exception) -> None:
        left = self._clear_queues()
        self._fail(left, exc)
        self._set_queued()
        if left:
            self._dropped(len(left), DROP_FAILED)

    def _dispatcher_ended(self, task: asyncio.Task[None]) -> None:
        """Watchdog: if the dispatcher dies outside `close()`, fail what is queued and refuse new work."""
        if self._closing:
            return
        self._broken = True
        exc = None if task.cancelled() else task.exception()
        log.critical("scheduler dispatcher ended unexpectedly; refusing new work", exc_info=exc)
        self._fail_queued(InferenceError("scheduler stopped unexpectedly"))

    async def _flush_ready(self) -> None:
        """Launch the batches due in lanes with a free slot (interactive first); sleep until the next is
        due or something changes; return when no lane with a free slot has work queued."""
        while True:
            waits = [
                due
                for lane in LANES
                if self._slots.free(lane) and (due := self._launch_due(lane)) is not None
            ]
            if not waits:
                return
            if min(waits) > 0:
                await self._sleep_or_wake(min(waits))

    def _launch_due(self, lane: str) -> float | None:
        """Launch `lane`'s next batch if it is due (0.0); else the seconds until it is (None: nothing
        queued). Texts are on their way to this lane's batches only if its own requests are coming."""
        queue = self._queues[lane]
        due = queue.due_in(self._admission.arriving_in[lane] > 0 and self._accepting)
        self._report_drops()
        if due == 0.0:
            batch = queue.next_batch()
            self._report_drops()
            if batch:
                self._launch(batch, lane)
        return due

    async def _sleep_or_wake(self, seconds: float) -> None:
        assert self._wake is not None
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    def _report_drops(self) -> None:
        """Fail the callers whose deadline passed in the queue; count every dropped text by reason."""
        drops = [drop for queue in self._queues.values() for drop in queue.take_drops()]
        if not drops:
            return
        counts: Counter[str] = Counter()
        for drop in drops:
            counts[drop.reason] += drop.items
            future = self._futures.get(drop.request)
            if drop.reason == DROP_DEADLINE and future is not None and not future.done():
                future.set_exception(DeadlineExceededError("deadline passed while the request was queued"))
        for reason, items in counts.items():
            self._dropped(items, reason)
        self._set_queued()

    def _launch(self, batch: list[Item], lane: str) -> None:
        self._set_queued()
        self._slots.take(lane)
        task = asyncio.get_running_loop().create_task(self._run(batch, lane))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[Item], lane: str) -> None:
        # Lone: no other batch running or queued when this one starts (the inline policy's question).
        lone = self.queued_items == 0 and self._slots.busy <= 1
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._slots.give(lane)
                self._launch_ready()

        try:
            await self._run_once(batch, lane, isolate=True, lone=lone, ran=release)
        finally:
            release()

    def _launch_ready(self) -> None:
        """A slot was freed: launch what is due at once, from here, rather than after the dispatcher's
        next turn of the event loop (under load the loop is busy answering callers, and every turn a
        session waits for is inference capacity lost); then let the dispatcher re-plan its timers."""
        if not self._closing:
            for lane in LANES:
                if self._slots.free(lane):
                    self._launch_due(lane)
        if self._wake is not None:
            self._wake.set()

    async def _run_once(
        self,
        batch: list[Item],
        lane: str,
        isolate: bool,
        lone: bool = False,
        ran: Callable[[], None] | None = None,
    ) -> None:
        """Run one batch. If it fails and holds several requests, each request is re-run alone, so a
        text that breaks the model fails only its own caller, not its batch-mates (a stuck batch is
        not re-run: that would double the time its callers wait)."""
        batch_id = next(self._batch_ids)
        rows = [item.ids for item in batch]
        if self._record is not None:
            self._record(rows)
        started = self._clock()
        try:
            out = await self._run_batch(rows, lone, lane)
            if out.shape[0] != len(batch):
                raise InferenceError(f"model returned {out.shape[0]} rows for {len(batch)} texts")
            if ran is not None:  # the session is free: start the next batch before answering this one's
                ran()
        except Exception as exc:
            groups = _by_request(batch)
            if not isolate or len(groups) < 2 or isinstance(exc, InferenceTimeoutError):
                self._batch_failed(batch, exc)
                return
            log.warning(
                "a batch of %d texts from %d requests failed; re-running each request alone",
                len(batch),
                len(groups),
                exc_info=exc,
            )
            self._count_failed(len(batch), exc)
            for group in groups:
                if group[0].request.gone is None:
                    await self._run_once(group, lane, isolate=False)
            return
        finished = self._clock()
        try:
            self._deliver(batch, out, batch_id, (started, finished), lane)
        except Exception as exc:  # e.g. a failing observer: callers must still get an answer
            self._batch_failed(batch, exc)

    def _count_failed(self, items: int, exc: Exception) -> None:
        if self._observer is not None:
            reason = "timeout" if isinstance(exc, InferenceTimeoutError) else "error"
            self._observer.observe_failed_batch(items, reason)

    def _batch_failed(self, batch: list[Item], exc: Exception) -> None:
        log.error("inference failed on a batch of %d texts", len(batch), exc_info=exc)
        self._count_failed(len(batch), exc)
        self._fail(batch, exc)

    def _fail(self, batch: list[Item], exc: Exception) -> None:
        """Answer every caller of `batch` still waiting with `exc` (ours, or INTERNAL for a foreign one)."""
        error = (
            exc
            if isinstance(exc, EmbedderError)
            else InferenceError(f"inference failed: {type(exc).__name__}")
        )
        for item in batch:
            request = item.request
            if request.gone is None:
                request.gone = DROP_FAILED  # now, not when the future's callback runs: its rows must not run
            future = self._futures.get(request)
            if future is not None and not future.done():
                future.set_exception(error)

    def _deliver(
        self, batch: list[Item], out: FloatArray, batch_id: int, ran: tuple[float, float], lane: str
    ) -> None:
        started, finished = ran
        for item, row in zip(batch, out, strict=True):
            request = item.request
            future = self._futures.get(request)
            if future is None or future.done():
                continue
            request.rows[item.index] = row
            request.remaining -= 1
            request.batches[batch_id] = ran
            request.queue_s = max(request.queue_s, started - item.enqueued_at)
            if request.remaining == 0:
                future.set_result(BatchResult(request.rows, request.queue_s, request.inference_s))
        if self._observer is not None:
            longest = max(len(item.ids) for item in batch)
            real = sum(len(item.ids) for item in batch)
            self._observer.observe_batch(len(batch), longest * len(batch), real, finished - started, lane)

    def _dropped(self, items: int, reason: str) -> None:
        if self._observer is not None:
            self._observer.observe_dropped(items, reason)

    def _set_queued(self) -> None:
        if self._observer is not None:
            self._observer.set_queued_items(self.queued_items)


def _by_request(batch: list[Item]) -> list[list[Item]]:
    """The batch's items grouped by the request they belong to, in batch order."""
    groups: dict[int, list[Item]] = {}
    for item in batch:
        groups.setdefault(id(item.request), []).append(item)
    return list(groups.values())
