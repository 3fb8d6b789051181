"""The batch queue: texts from all callers, grouped by length. A plain synchronous data structure.

No tasks, no event loop, no sleeping: the clock is injected, so every flush rule is tested by moving a
fake clock (tests/unit/test_queue.py). `embedder.core.scheduler` drives it.

Flush rules (`due_in`): a batch is due when `max_batch_items` texts are queued, when the queued texts
would fill `max_batch_tokens` padded tokens (longest x count), when the oldest text has waited
`max_wait_ms`, or at once when no more texts are on their way (waiting for batch-mates only pays while
some are coming, so a lone caller on an idle server is not charged `max_wait_ms`).

A batch (`next_batch`) starts from the text that fair queuing serves next, and is filled with the texts
closest to it in length, to cut padding; with `min_padding_efficiency` a text that would leave the
batch less than that share of real tokens waits for the next batch instead.

Fair queuing (self-clocked, per request, cost = tokens): each text gets a finish tag, the queue's
virtual time when its request arrived plus the tokens of the request's texts up to and including it;
the next batch starts from the smallest tag, and the virtual time moves to it. So a request of 512 long
texts is served interleaved with the requests that arrive after it, instead of ahead of them all (with
a plain FIFO a one-text call waited behind every text queued before it), and nothing starves: a new
text's tag is never below the virtual time, which rises with every batch. Texts whose caller is
gone (cancelled, failed, deadline passed) are dropped on the way and reported by `take_drops`.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

# Why queued texts were dropped before inference (label values of the dropped-items metric).
DROP_DEADLINE = "deadline"
DROP_CANCELLED = "cancelled"
DROP_FAILED = "failed"  # another part of the same request failed, or the scheduler broke
DROP_SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class QueueLimits:
    max_batch_items: int
    max_batch_tokens: int
    max_wait_ms: float
    # A text joins a batch only if the batch stays at least this share real tokens (real / padded).
    # 0 = no such rule: one request of mixed lengths runs as one batch (~0.6 on item texts).
    min_padding_efficiency: float = 0.0


class Request:
    """One caller's texts while queued and running: where its rows go, and whether anyone still waits.

    `gone` is None while the caller waits; the scheduler sets it to a drop reason when the caller is
    cancelled or its request failed, and the queue sets it to DROP_DEADLINE when its deadline passes.
    """

    __slots__ = ("batches", "deadline", "gone", "queue_s", "remaining", "rows")

    def __init__(self, n: int, dim: int, deadline: float | None = None) -> None:
        self.rows: FloatArray = np.empty((n, dim), dtype=np.float32)
        self.remaining = n
        self.deadline = deadline
        self.gone: str | None = None
        self.queue_s = 0.0
        # The batches that carried its texts: id -> (started, finished), on the scheduler's clock.
        self.batches: dict[int, tuple[float, float]] = {}

    @property
    def inference_s(self) -> float:
        """Time during which at least one of its batches ran: batches of one request may run at once
        on different sessions, and the sum of their times would exceed the caller's wall time."""
        covered, reach = 0.0, float("-inf")
        for started, finished in sorted(self.batches.values()):
            covered += max(0.0, finished - max(started, reach))
            reach = max(reach, finished)
        return covered

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


@dataclass(slots=True, eq=False)  # identity equality: deque.remove must find this very item
class Item:
    request: Request
    index: int
    ids: list[int]
    enqueued_at: float
    tag: int = 0  # fair-queuing finish tag (module docstring)
    taken: bool = False


@dataclass(frozen=True)
class Drop:
    """Texts of one request dropped before inference, and why (a DROP_* reason)."""

    request: Request
    items: int
    reason: str


class BatchQueue:
    """Texts waiting for inference. Not thread-safe: one owner (the scheduler, on its event loop)."""

    def __init__(self, limits: QueueLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._fifo: deque[Item] = deque()  # by age: the max_wait_ms rule
        self._fair: list[tuple[int, int, Item]] = []  # heap by finish tag: who leads the next batch
        self._virtual = 0
        self._seq = itertools.count()
        self._by_length: dict[int, deque[Item]] = {}
        self._queued = 0
        self._drops: list[Drop] = []

    def __len__(self) -> int:
        """Texts queued (dropped and taken ones excluded)."""
        return self._queued

    def push(self, request: Request, rows: Sequence[list[int]]) -> None:
        """Queue one request's token rows, enqueued now."""
        now = self.clock()
        finish = self._virtual
        for i, ids in enumerate(rows):
            finish += max(1, len(ids))
            item = Item(request, i, ids, now, finish)
            self._fifo.append(item)
            heapq.heappush(self._fair, (finish, next(self._seq), item))
            self._by_length.setdefault(len(ids), deque()).append(item)
        self._queued += len(rows)

    def due_in(self, more_coming: bool) -> float | None:
        """Seconds until a batch is due: 0.0 = now, None = nothing queued (see the module docstring)."""
        oldest = self._oldest_live()
        if oldest is None:
            return None
        if not more_coming or self._full():
            return 0.0
        return max(0.0, oldest.enqueued_at + self.limits.max_wait_ms / 1000.0 - self.clock())

    def next_batch(self) -> list[Item]:
        """The text fair queuing serves next plus the texts nearest to it in length, within both batch
        limits ([] if none)."""
        lead = self._fairest_live()
        if lead is None:
            return []
        self._virtual = max(self._virtual, lead.tag)
        self._remove(lead)
        batch = [lead]
        longest = real = len(lead.ids)
        now = self.clock()
        for length in sorted(self._by_length, key=lambda n: (abs(n - len(lead.ids)), n)):
            for item in list(self._by_length.get(length, ())):
                if len(batch) >= self.limits.max_batch_items:
                    return batch
                padded = max(longest, length) * (len(batch) + 1)
                if padded > self.limits.max_batch_tokens:
                    break
                if real + length < self.limits.min_padding_efficiency * padded:
                    break  # this length would pad the batch too much; the next one may not
                if self._drop_if_gone(item, now):
                    continue
                self._remove(item)
                batch.append(item)
                longest = max(longest, length)
                real += length
        return batch

    def clear(self) -> list[Item]:
        """Remove and return every text still queued (shutdown, or a broken scheduler)."""
        left = [item for item in self._fifo if not item.taken]
        self._fifo.clear()
        self._fair.clear()
        self._by_length.clear()
        self._queued = 0
        return left

    def take_drops(self) -> list[Drop]:
        """What was dropped since the last call, in order."""
        drops, self._drops = self._drops, []
        return drops

    def _oldest_live(self) -> Item | None:
        """Head of the FIFO, dropping items already taken or whose caller is gone or out of time."""
        now = self.clock()
        while self._fifo:
            item = self._fifo[0]
            if item.taken:
                self._fifo.popleft()
                continue
            if self._drop_if_gone(item, now):
                continue
            return item
        return None

    def _fairest_live(self) -> Item | None:
        """The live text with the smallest finish tag; taken and dropped ones leave the heap on the way."""
        now = self.clock()
        if len(self._fair) > 2 * self._queued + 1024:  # taken by other batches' fills: compact
            self._fair = [entry for entry in self._fair if not entry[2].taken]
            heapq.heapify(self._fair)
        while self._fair:
            item = self._fair[0][2]
            if item.taken or self._drop_if_gone(item, now):
                heapq.heappop(self._fair)
                continue
            return item
        return None

    def _drop_if_gone(self, item: Item, now: float) -> bool:
        request = item.request
        expired = request.expired(now)
        if request.gone is None and expired:
            request.gone = DROP_DEADLINE
        if request.gone is None:
            return False
        self._remove(item)
        # A caller whose deadline passed is usually cancelled by its front end too: the deadline is why.
        self._drops.append(Drop(request, 1, DROP_DEADLINE if expired else request.gone))
        return True

    def _remove(self, item: Item) -> None:
        item.taken = True
        bucket = self._by_length[len(item.ids)]
        bucket.remove(item)
        if not bucket:
            del self._by_length[len(item.ids)]
        self._queued -= 1

    def _full(self) -> bool:
        """True when the queued texts already fill a batch by count or by padded tokens."""
        if self._queued >= self.limits.max_batch_items:
            return True
        longest = max(self._by_length, default=0)
        return longest * self._queued >= self.limits.max_batch_tokens
