"""A fixed pool of daemon worker threads behind the `concurrent.futures.Executor` interface.

`ThreadPoolExecutor` joins its threads at interpreter exit, so one thread stuck inside ONNX Runtime
would keep a drained server from ever exiting. These threads are daemons: a stuck one is abandoned
(the session pool's watchdog has already answered its callers) and the process still exits. A task
that raises `SystemExit` or a Rust panic does not kill its thread; its caller gets `WorkerDiedError`.
A pool may run its threads at a lower OS priority (`nice_increment`; the bulk lane's, core/lanes.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger(__name__)

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class WorkerDiedError(RuntimeError):
    """A task raised a BaseException (not an Exception) in a worker thread."""


def call_guarded(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """`fn(*args)` on the calling thread, with the worker threads' rule: an Exception passes through,
    any other BaseException (SystemExit, a Rust panic) becomes `WorkerDiedError`, so work run inline on
    the event loop cannot stop the loop or leave a caller unanswered. Ctrl-C and cancellation pass."""
    try:
        return fn(*args, **kwargs)
    except Exception:
        raise
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise
    except BaseException as exc:
        log.error("inline work raised %s; converted to an error", type(exc).__name__, exc_info=exc)
        raise WorkerDiedError(f"inline work raised {type(exc).__name__}") from None


def lower_thread_priority(increment: int) -> None:
    """Lower the calling thread's OS priority by `increment` steps of nice (at most to 19).

    Linux only, where nice is per thread (`setpriority` on the thread id); elsewhere a no-op. Relative
    to the thread's current value, so a server started under `nice` keeps its bulk threads below its
    own. One way: an unprivileged process can raise nice but never lower it back, so a thread that did
    this stays low for good (the reason lanes have threads of their own, not a priority per batch)."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError as exc:  # e.g. a sandbox that forbids it: the thread works, only at the usual priority
        log.warning("cannot lower thread %s's priority: %s", threading.current_thread().name, exc)


class DaemonThreadPool(Executor):
    """`threads` daemon threads taking work from one queue, in order; `nice_increment` > 0 lowers each
    thread's OS priority by that much when it starts (`lower_thread_priority`)."""

    def __init__(self, threads: int, name: str, nice_increment: int = 0) -> None:
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._shutdown = False
        self.nice_increment = nice_increment
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
        lower_thread_priority(self.nice_increment)
        while (work := self._work.get()) is not None:
            future, fn, args, kwargs = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except Exception as exc:  # handed to the waiting caller, like ThreadPoolExecutor does
                future.set_exception(exc)
            except BaseException as exc:
                # SystemExit or a Rust panic (pyo3's PanicException is a BaseException) would end this
                # thread and, handed to asyncio as is, stop the server's event loop. The caller gets
                # an ordinary error instead, and the thread keeps serving.
                log.error("worker thread caught %s; the pool keeps running", type(exc).__name__, exc_info=exc)
                future.set_exception(WorkerDiedError(f"worker raised {type(exc).__name__}"))

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
