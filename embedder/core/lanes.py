"""Priority lanes: interactive requests run ahead of bulk ones on the CPU, not only in the queue.

Fair queuing (queue.py) stops a large request from queueing ahead of small ones, but once both run, a
flood of long texts keeps every core busy with inference and tokenizing, and a short call's threads get
the same CPU share as the flood's (issue 14: normal calls' p99 6-12x their unloaded p99 under a
long-text flood, with smaller batches and a niced event loop making no difference). So each request is
classified when admitted: **bulk** when its tokenizing cost (`cost_chars`, what admission counts) is at
least `bulk_min_chars`, else **interactive**. Bulk work runs on threads of its own that lower their own
OS priority once, at start (`BULK_NICE_INCREMENT` steps of nice, to 19: Linux's CFS then gives a nice-0
thread ~98% of a core against a nice-19 one); interactive work stays on the server's own priority. Priority
must be per thread, not per batch: an unprivileged process may raise its nice value but never lower it
back (workers.py, `lower_thread_priority`).

Inference capacity (`Slots`): each lane may run at most `workers` batches, and one more session than
workers exists, so an interactive batch always finds a session and a thread even while bulk batches
hold every slot of theirs; with no interactive work, bulk uses every core as before.
"""

from __future__ import annotations

INTERACTIVE = "interactive"
BULK = "bulk"
LANES = (INTERACTIVE, BULK)  # the `lane` label's values; the dispatcher serves them in this order

# How many steps of nice bulk threads take below the server's own priority (capped at 19 by the OS).
# 19, the lowest: under the mixed attack (30-s runs, interleaved, 2026-12-04, AVX-512) the normal calls'
# p99 was 51-57 ms with 19 against 58-64 with 10 and 63-69 with 0 (SCHED_IDLE: 54, 54; not worth a
# scheduling class of its own). Bulk work still gets any core interactive work leaves idle.
BULK_NICE_INCREMENT = 19


def classify(cost_chars: int, bulk_min_chars: int) -> str:
    """The lane of a request that will tokenize `cost_chars` characters; `bulk_min_chars` 0 = lanes off."""
    return BULK if 0 < bulk_min_chars <= cost_chars else INTERACTIVE


class Slots:
    """Batches running per lane: at most `per_lane` each, and `per_lane + 1` in all when lanes are on
    (the extra session is what an interactive batch can always start on). Pure bookkeeping."""

    def __init__(self, per_lane: int, lanes_on: bool) -> None:
        self.per_lane = per_lane
        self.total = per_lane + 1 if lanes_on else per_lane
        self.running = dict.fromkeys(LANES, 0)

    @property
    def busy(self) -> int:
        """Batches running now, in all lanes."""
        return sum(self.running.values())

    def free(self, lane: str) -> bool:
        """May one more batch of `lane` start now?"""
        return self.running[lane] < self.per_lane and self.busy < self.total

    def take(self, lane: str) -> None:
        self.running[lane] += 1

    def give(self, lane: str) -> None:
        self.running[lane] -= 1
