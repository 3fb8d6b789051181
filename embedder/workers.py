"""A fixed pool of daemon worker threads behind the `concurrent.futures.Executor` interface.

`ThreadPoolExecutor` joins its threads at interpreter exit, so one thread stuck inside ONNX Runtime
would keep a drained server from ever exiting. These threads are daemons: a stuck one is abandoned
(the session pool's watchdog has already answered its callers) and the process still exits.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonThreadPool(Executor):
    """`threads` daemon threads taking work from one queue, in order."""

    def __init__(self, threads: int, name: str) -> None:
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._shutdown = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new work after shutdown")
        future: Future[T] = Future()
        self._work.put((future, fn, args, kwargs))
        return future

    def _loop(self) -> None:
        while (work := self._work.get()) is not None:
            future, fn, args, kwargs = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to the waiting caller, like ThreadPoolExecutor does
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout_s: float = 5.0) -> None:
        """Stop taking work; with `wait`, join the threads for up to `timeout_s` in all (stuck ones stay)."""
        self._shutdown = True
        if cancel_futures:
            while True:
                try:
                    work = self._work.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
        for _ in self._threads:
            self._work.put(None)
        if wait:
            end = time.monotonic() + timeout_s
            for thread in self._threads:
                thread.join(max(0.0, end - time.monotonic()))
