"""Concurrency limits per lane of calls, so that one kind of call cannot starve another.

gRPC's own `maximum_concurrent_rpcs` counts every RPC alike: ~1,024 idle health `Watch` streams, which
need no API key, used to fill it, after which keyed Embed calls *and* health Check were refused
("Concurrent RPC limit exceeded") and the liveness probe failed (issue 14, defect 1). Here each lane has
its own bound, and gRPC's global cap is off:

- `watch`: health Watch streams (no key needed; they stay open): at most `max_health_watch_streams`;
- `calls`: every other call but health Check (Embedder, reflection): at most `max_concurrent_rpcs`;
- health Check is never refused here: it is unary, answers at once, and probes depend on it.

A call beyond its lane's bound gets RESOURCE_EXHAUSTED at once and is counted in `requests_total`; the
open calls of each lane are the `open_calls` gauge. At drain, `end_watch_streams` ends the open Watch
streams (NOT_SERVING, then UNAVAILABLE), which would otherwise hold gRPC's graceful stop to its grace.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2

from embedder.errors import OverloadedError, ShuttingDownError
from embedder.grpc.handlers import refusing, wrap
from embedder.grpc.status import status_for
from embedder.metrics import Metrics

if TYPE_CHECKING:  # the stubs' generics are not subscriptable at run time
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


@dataclass
class Lane:
    """Calls counted together while open; refused beyond `cap` (0 = no cap)."""

    name: str
    cap: int
    what: str  # for the refusal message: "open health Watch streams"
    active: int = 0


class CallLimits(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """The first interceptor: refuses a call whose lane is full before any other work is done for it."""

    def __init__(self, max_calls: int, max_watch_streams: int, metrics: Metrics | None = None) -> None:
        self.calls = Lane("calls", max_calls, "concurrent calls")
        self.watch = Lane("watch", max_watch_streams, "open health Watch streams")
        self._metrics = metrics
        self._watchers: dict[asyncio.Task[Any], Context] = {}
        self._ending: set[asyncio.Task[Any]] = set()
        for lane in (self.calls, self.watch):
            self._gauge(lane)

    def lane_of(self, method: str) -> Lane | None:
        if method == HEALTH_CHECK:
            return None
        return self.watch if method == HEALTH_WATCH else self.calls

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        lane = self.lane_of(method)
        if handler is None or lane is None:
            return handler
        if lane.cap and lane.active >= lane.cap:
            return refusing(handler, lambda: self._refusal(lane, method))
        started = [False]
        wrapped = wrap(handler, lambda context: self._open(context, lane, method, started))
        if not wrapped.request_streaming and self._metrics is not None:
            # A unary request that never reaches its handler was refused by gRPC itself (a message over
            # max_receive_message_bytes) or given up by its caller while sending: gRPC tells us neither,
            # so count it apart (unreceived_requests_total) once gRPC lets go of the handler.
            behavior = wrapped.unary_unary or wrapped.unary_stream
            weakref.finalize(behavior, _count_unreached, self._metrics, method, started)
        return wrapped

    @asynccontextmanager
    async def _open(
        self, context: Context, lane: Lane, method: str, started: list[bool]
    ) -> AsyncIterator[None]:
        started[0] = True
        # Checked again when the call starts: calls resolved at the same moment must not overshoot.
        if lane.cap and lane.active >= lane.cap:
            await self._refuse(context, lane, method)
        lane.active += 1
        self._gauge(lane)
        task = asyncio.current_task()
        if lane is self.watch and task is not None:
            self._watchers[task] = context
        try:
            yield
        except asyncio.CancelledError:
            if task not in self._ending:
                raise
            await _end_watch(context)  # the drain ended this Watch stream: say why
        except Exception:
            if lane is not self.watch:
                raise
            raise asyncio.CancelledError from None  # the health servicer's write failed: caller gone
        finally:
            lane.active -= 1
            self._gauge(lane)
            if task is not None:
                self._watchers.pop(task, None)
                self._ending.discard(task)

    def _refusal(self, lane: Lane, method: str) -> tuple[grpc.StatusCode, str]:
        """The status a call refused for `lane` ends with, counted."""
        error = OverloadedError(f"too many {lane.what} (limit {lane.cap}); retry with backoff")
        code, message = status_for(error, "")
        if self._metrics is not None:
            self._metrics.observe_request(method.rsplit("/", 1)[-1], code.name, 0.0)
        return code, message

    async def _refuse(self, context: Context, lane: Lane, method: str) -> None:
        code, message = self._refusal(lane, method)
        await context.abort(code, message)

    def end_watch_streams(self) -> int:
        """Drain: end every open Watch stream (NOT_SERVING, then UNAVAILABLE). Returns how many."""
        for task in self._watchers:
            self._ending.add(task)
            task.cancel()
        return len(self._watchers)

    def _gauge(self, lane: Lane) -> None:
        if self._metrics is not None:
            self._metrics.open_calls.labels(lane=lane.name).set(lane.active)


def _count_unreached(metrics: Metrics, method: str, started: list[bool]) -> None:
    if not started[0]:
        metrics.unreceived_requests.labels(method=method.rsplit("/", 1)[-1]).inc()


async def _end_watch(context: Context) -> None:
    not_serving = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        await context.write(not_serving)
    except Exception:  # the watcher is gone already: nothing to tell it
        raise asyncio.CancelledError from None
    code, message = status_for(ShuttingDownError("server is shutting down; reconnect elsewhere"), "")
    await context.abort(code, message)
