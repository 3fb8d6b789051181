"""Admission: the queue bound, counted before any work is done on a request.

A request on its way (being tokenized) reserves its queue slots up front, so an overloaded server refuses
it at once, before spending CPU on it. The same count tells the scheduler whether texts are on their way,
which is what makes waiting for batch-mates worth it. Pure bookkeeping: `Scheduler.reserve` wraps it in a
`Reservation`, the one object a caller holds.
"""

from __future__ import annotations

from embedder.errors import OverloadedError


class Admission:
    """Queued + reserved texts stay within `capacity` (`max_queued_items`)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.reserved = 0  # slots promised to requests on their way
        self.arriving = 0  # requests on their way

    def check(self, items: int, queued: int) -> None:
        """Raise `OverloadedError` unless `items` more texts fit next to `queued` and the reservations."""
        if queued + self.reserved + items > self.capacity:
            raise OverloadedError(
                f"queue full: {queued + self.reserved} texts queued, {items} more would exceed "
                f"max_queued_items={self.capacity}; retry with backoff"
            )

    def claim(self, items: int, queued: int) -> None:
        """Reserve `items` slots for one request on its way (`OverloadedError` if they do not fit)."""
        self.check(items, queued)
        self.reserved += items
        self.arriving += 1

    def settle(self, items: int) -> None:
        """The request came (its texts are queued now) or will not come: its reservation ends."""
        self.reserved -= items
        self.arriving -= 1
