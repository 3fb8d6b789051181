"""DaemonThreadPool: a task that raises a BaseException (SystemExit, a Rust panic) fails only its caller."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import pytest

from embedder.core.workers import DaemonThreadPool, WorkerDiedError


class PanicException(BaseException):
    """Like pyo3's: Rust panics surface in Python as a BaseException, not an Exception."""


def _panic() -> None:
    raise PanicException("called `Option::unwrap()` on a `None` value")


def _interrupt() -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("task", [sys.exit, _panic, _interrupt])
def test_base_exception_fails_the_caller_and_the_thread_keeps_serving(task: Callable[[], object]) -> None:
    pool = DaemonThreadPool(1, "test-worker")
    try:
        with pytest.raises(WorkerDiedError, match="worker raised"):
            pool.submit(task).result(timeout=5)
        assert pool.submit(lambda: 42).result(timeout=5) == 42  # the one thread is still there
        assert all(t.is_alive() for t in pool._threads)
    finally:
        pool.shutdown(wait=True)


def test_system_exit_in_a_worker_does_not_stop_the_event_loop() -> None:
    pool = DaemonThreadPool(1, "test-worker")

    async def main() -> str:
        loop = asyncio.get_running_loop()
        with pytest.raises(WorkerDiedError):
            await loop.run_in_executor(pool, sys.exit, 3)
        return "the loop is still running"

    try:
        assert asyncio.run(main()) == "the loop is still running"
    finally:
        pool.shutdown(wait=True)


def test_ordinary_exceptions_reach_the_caller_unchanged() -> None:
    pool = DaemonThreadPool(1, "test-worker")
    try:
        with pytest.raises(ValueError, match="bad"):
            pool.submit(int, "bad").result(timeout=5)
    finally:
        pool.shutdown(wait=True)
