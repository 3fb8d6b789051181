"""Admission: the queue bound and the tokenizer's backlog, counted before any work is done on a request.

A request on its way (being tokenized) reserves its queue slots up front, so an overloaded server refuses
it at once, before spending CPU on it. The same count tells the scheduler whether texts are on their way,
which is what makes waiting for batch-mates worth it. Pure bookkeeping: `Scheduler.reserve` wraps it in a
`Reservation` (here), the one object a caller holds.

Tokenizing is work too: two callers sending 512 long texts each used to keep the tokenizer threads busy
for seconds while the queue stayed empty and nothing was refused (issue 14, defect 2). A reservation
therefore also holds the characters it will tokenize (the tokenizer's estimate: at most a prefix per
text), and the characters reserved but not yet tokenized stay within `max_tokenizing_chars`. A request
is always admitted when nothing else waits for the tokenizer, so no single request is refused forever,
and a small one always, so that a flood of long texts cannot get short calls refused.

A reservation also carries the request's lane (core/lanes.py), decided here from the same characters:
which tokenizer threads and inference slots its work gets, and which lane it is on its way to (a batch
is worth waiting for only while texts of its own lane are coming).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from embedder.core.lanes import INTERACTIVE, LANES
from embedder.errors import OverloadedError

FloatArray = npt.NDArray[np.float32]

# Requests tokenizing at most this many characters (e.g. 8 texts of 500) pass the backlog bound.
SMALL_REQUEST_CHARS = 4096


class Admission:
    """Queued + reserved texts stay within `capacity` (`max_queued_items`); reserved characters to
    tokenize within `max_chars` (`max_tokenizing_chars`, 0 = no bound)."""

    def __init__(self, capacity: int, max_chars: int = 0) -> None:
        self.capacity = capacity
        self.max_chars = max_chars
        self.reserved = 0  # slots promised to requests on their way
        self.arriving = 0  # requests on their way
        self.arriving_in = dict.fromkeys(LANES, 0)  # the same, by lane
        self.chars = 0  # characters those requests will tokenize

    def check(self, items: int, queued: int) -> None:
        """Raise `OverloadedError` unless `items` more texts fit next to `queued` and the reservations."""
        if queued + self.reserved + items > self.capacity:
            raise OverloadedError(
                f"queue full: {queued + self.reserved} texts queued, {items} more would exceed "
                f"max_queued_items={self.capacity}; retry with backoff"
            )

    def check_chars(self, chars: int) -> None:
        """Raise `OverloadedError` if tokenizing `chars` more would exceed the tokenizer backlog bound.
        A small request (at most SMALL_REQUEST_CHARS) is never refused for it: the bound is there to
        stop floods of long texts, not the short calls they would otherwise starve."""
        if chars <= SMALL_REQUEST_CHARS:
            return
        if self.max_chars and self.chars > 0 and self.chars + chars > self.max_chars:
            raise OverloadedError(
                f"tokenizer busy: {self.chars} characters waiting to be tokenized, {chars} more would "
                f"exceed max_tokenizing_chars={self.max_chars}; retry with backoff"
            )

    def claim(self, items: int, queued: int, chars: int = 0, lane: str = INTERACTIVE) -> None:
        """Reserve `items` slots and `chars` characters to tokenize for one request of `lane` on its way
        (`OverloadedError` if they do not fit)."""
        self.check(items, queued)
        self.check_chars(chars)
        self.reserved += items
        self.arriving += 1
        self.arriving_in[lane] += 1
        self.chars += chars

    def tokenized(self, chars: int) -> None:
        """The request's characters are tokenized (or never will be): they leave the backlog."""
        self.chars -= chars

    def settle(self, items: int, lane: str = INTERACTIVE) -> None:
        """The request came (its texts are queued now) or will not come: its reservation ends."""
        self.reserved -= items
        self.arriving -= 1
        self.arriving_in[lane] -= 1


@dataclass
class BatchResult:
    embeddings: FloatArray
    queue_s: float
    inference_s: float


class Reservation:
    """Queue slots (and characters to tokenize) held for one request on its way. Submit through it, or
    leave the `with` block to give the slots back; either ends the reservation exactly once."""

    def __init__(self, scheduler: Holder, items: int, chars: int = 0, lane: str = INTERACTIVE) -> None:
        self._scheduler = scheduler
        self.items = items
        self.chars = chars
        self.lane = lane
        self._open = True

    def tokenized(self) -> None:
        """The request's texts are tokenized (or never will be): its characters leave the tokenizer's
        backlog (idempotent; `release` and `submit` do it too)."""
        if self.chars:
            self._scheduler._untokenize(self.chars)
            self.chars = 0

    def release(self) -> None:
        """Give the slots back (idempotent): the request will not come."""
        self.tokenized()
        if self._open:
            self._open = False
            self._scheduler._settle(self.items, self.lane)

    async def submit(self, rows: Sequence[list[int]], deadline: float | None = None) -> BatchResult:
        """Queue the request's token rows; return its embeddings in input order.

        `deadline` is on the scheduler's clock (`time.monotonic` by default).
        """
        if not self._open:
            raise RuntimeError("this reservation was already used or released")
        self.release()
        return await self._scheduler._enqueue(rows, deadline, self.lane)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Holder(Protocol):
    """The scheduler's side of a `Reservation`."""

    def _untokenize(self, chars: int) -> None: ...

    def _settle(self, items: int, lane: str) -> None: ...

    async def _enqueue(self, rows: Sequence[list[int]], deadline: float | None, lane: str) -> BatchResult: ...
