"""BatchQueue: every flush rule, grouping by length, no starvation, drops, on a fake clock (no sleeps)."""

from __future__ import annotations

from typing import Any

import pytest

from embedder.core.queue import (
    DROP_CANCELLED,
    DROP_DEADLINE,
    BatchQueue,
    Item,
    QueueLimits,
    Request,
)

DIM = 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(**kw: Any) -> tuple[BatchQueue, FakeClock]:
    base: dict[str, Any] = {"max_batch_items": 1000, "max_batch_tokens": 100_000, "max_wait_ms": 50.0}
    base.update(kw)
    clock = FakeClock()
    return BatchQueue(QueueLimits(**base), clock), clock


def rows(first: int, n: int, length: int = 5) -> list[list[int]]:
    """n rows whose first token is first, first+1, ... (so a batch shows whose rows it holds)."""
    return [[first + i] + [0] * (length - 1) for i in range(n)]


def push(queue: BatchQueue, token_rows: list[list[int]], deadline: float | None = None) -> Request:
    request = Request(len(token_rows), DIM, deadline)
    queue.push(request, token_rows)
    return request


def firsts(batch: list[Item]) -> list[int]:
    return [item.ids[0] for item in batch]


def test_empty_queue_has_nothing_due() -> None:
    queue, _ = make()
    assert queue.due_in(more_coming=False) is None
    assert queue.next_batch() == []


def test_due_at_once_when_nothing_more_is_coming() -> None:
    queue, _ = make(max_wait_ms=60_000)
    push(queue, rows(0, 3))
    assert queue.due_in(more_coming=False) == 0.0


def test_waits_max_wait_ms_for_batch_mates_while_more_are_coming() -> None:
    queue, clock = make(max_wait_ms=50)
    push(queue, rows(0, 3))
    assert queue.due_in(more_coming=True) == pytest.approx(0.05)
    clock.advance(0.03)
    assert queue.due_in(more_coming=True) == pytest.approx(0.02)
    clock.advance(0.02)
    assert queue.due_in(more_coming=True) == 0.0


def test_the_oldest_text_sets_the_wait() -> None:
    queue, clock = make(max_wait_ms=50)
    push(queue, rows(0, 1))
    clock.advance(0.04)
    push(queue, rows(10, 1))
    assert queue.due_in(more_coming=True) == pytest.approx(0.01)


def test_due_when_max_batch_items_are_queued() -> None:
    queue, _ = make(max_batch_items=4, max_wait_ms=60_000)
    push(queue, rows(0, 3))
    assert queue.due_in(more_coming=True) == 60.0
    push(queue, rows(10, 1))
    assert queue.due_in(more_coming=True) == 0.0
    push(queue, rows(20, 4))
    assert [firsts(queue.next_batch()), firsts(queue.next_batch())] == [[0, 1, 2, 10], [20, 21, 22, 23]]
    assert len(queue) == 0


def test_due_when_padded_tokens_fill_a_batch() -> None:
    queue, _ = make(max_batch_tokens=40, max_wait_ms=60_000)
    push(queue, rows(0, 3, length=10))  # 30 padded tokens
    assert queue.due_in(more_coming=True) == 60.0
    push(queue, rows(10, 1, length=2))  # 4 rows padded to 10 = 40
    assert queue.due_in(more_coming=True) == 0.0


def test_a_batch_is_cut_at_max_batch_tokens_counting_padding() -> None:
    queue, _ = make(max_batch_tokens=60)
    push(queue, [[1] * 30, [2], [3], [4]])  # one 30-token row pads the others: 2 rows fit in 60
    sizes = []
    while len(queue):
        batch = queue.next_batch()
        assert max(len(i.ids) for i in batch) * len(batch) <= 60
        sizes.append(len(batch))
    assert sum(sizes) == 4 and sizes[0] == 2


def test_groups_texts_of_like_length() -> None:
    queue, _ = make(max_batch_items=4)
    push(queue, [[i] * (3 if i % 2 == 0 else 20) for i in range(1, 9)])  # short, long, short, long ...
    first, second = queue.next_batch(), queue.next_batch()
    assert {len(i.ids) for i in first} == {20}  # the oldest text (long) leads, with its like
    assert {len(i.ids) for i in second} == {3}


def test_a_small_request_is_not_queued_behind_a_large_one() -> None:
    queue, _ = make(max_batch_items=10, min_padding_efficiency=0.8)
    push(queue, rows(1000, 100, length=20))  # a bulk request: 10 batches of work
    assert len(queue.next_batch()) == 10
    push(queue, rows(1, 1, length=5))  # arrives after: a FIFO would run it after the other 90
    assert firsts(queue.next_batch()) == [1]


def test_large_and_small_requests_share_batches_fairly_by_tokens() -> None:
    queue, _ = make(max_batch_items=1)
    push(queue, rows(1000, 50, length=10))  # 500 tokens
    push(queue, rows(2000, 50, length=10))  # the same work, queued just after
    served = [firsts(queue.next_batch())[0] for _ in range(20)]
    # Interleaved, one text each in turn, not 20 of the first request.
    assert sum(1 for first in served if first >= 2000) == 10


def test_no_text_starves_under_a_stream_of_short_requests() -> None:
    queue, _ = make(max_batch_items=1)
    push(queue, [[7] * 30])
    push(queue, [[3] * 3])
    served = [firsts(queue.next_batch())]
    while served[-1] != [7] and len(served) < 50:
        push(queue, [[3] * 3])  # a new short request for every batch served
        served.append(firsts(queue.next_batch()))
    # Its tag is 30 tokens: it leads once the virtual time passes the shorter ones' tags (~10 batches).
    assert served[-1] == [7] and len(served) <= 11


def test_rows_come_back_tagged_with_their_request_and_index() -> None:
    queue, _ = make()
    a, b = push(queue, rows(0, 2)), push(queue, rows(10, 2))
    batch = queue.next_batch()
    assert [(i.request is a, i.index) for i in batch] == [(True, 0), (True, 1), (False, 0), (False, 1)]
    assert all(i.request is b for i in batch[2:])


def test_a_request_past_its_deadline_is_dropped_not_batched() -> None:
    queue, clock = make()
    late = push(queue, rows(0, 2), deadline=clock.now + 0.01)
    push(queue, rows(10, 1))
    clock.advance(0.02)
    assert firsts(queue.next_batch()) == [10]
    assert late.gone == DROP_DEADLINE
    drops = queue.take_drops()
    assert [(d.request is late, d.reason) for d in drops] == [(True, DROP_DEADLINE)] * 2
    assert queue.take_drops() == []


def test_a_gone_caller_s_texts_are_dropped_with_its_reason() -> None:
    queue, _ = make()
    gone = push(queue, rows(0, 3))
    push(queue, rows(10, 1))
    gone.gone = DROP_CANCELLED
    assert queue.due_in(more_coming=False) == 0.0
    assert firsts(queue.next_batch()) == [10]
    assert sum(d.items for d in queue.take_drops() if d.reason == DROP_CANCELLED) == 3
    assert len(queue) == 0


def test_a_caller_cancelled_because_its_deadline_passed_counts_as_deadline() -> None:
    queue, clock = make()
    late = push(queue, rows(0, 2), deadline=clock.now + 0.01)
    late.gone = DROP_CANCELLED  # the front end cancels a call whose deadline passed
    clock.advance(0.02)
    assert queue.due_in(more_coming=False) is None
    assert {d.reason for d in queue.take_drops()} == {DROP_DEADLINE}


def test_clear_returns_what_was_left() -> None:
    queue, _ = make(max_batch_items=2)
    push(queue, rows(0, 5))
    queue.next_batch()
    assert firsts(queue.clear()) == [2, 3, 4]
    assert len(queue) == 0 and queue.due_in(more_coming=False) is None


def test_min_padding_efficiency_keeps_far_lengths_for_the_next_batch() -> None:
    queue, _ = make(min_padding_efficiency=0.8)
    push(queue, [*rows(1, 3, length=10), *rows(10, 3, length=12), *rows(20, 2, length=40)])
    first = queue.next_batch()
    # 10s and 12s together are 11/12 real; a 40 would leave (3*10 + 3*12 + 40) / (7*40) < 0.8.
    assert firsts(first) == [1, 2, 3, 10, 11, 12]
    assert firsts(queue.next_batch()) == [20, 21]
    assert queue.next_batch() == []


def test_without_the_rule_one_batch_takes_every_length() -> None:
    queue, _ = make()
    push(queue, [*rows(1, 3, length=10), *rows(20, 2, length=40)])
    assert firsts(queue.next_batch()) == [1, 2, 3, 20, 21]


def test_inference_time_of_a_request_counts_overlapping_batches_once() -> None:
    # Two batches of one request on two sessions at once, then a third after a gap: 3 + 1 s, not 2 + 2 + 1.
    request = Request(6, 4)
    request.batches.update({1: (10.0, 12.0), 2: (11.0, 13.0), 3: (20.0, 21.0)})
    assert request.inference_s == pytest.approx(4.0)
    assert Request(1, 4).inference_s == 0.0
