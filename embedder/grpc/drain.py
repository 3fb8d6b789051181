"""In-flight accounting for the graceful drain: when has every accepted Embedder call been answered?

`grpc.aio.Server.stop(grace)` waits for every open RPC, and a health `Watch` stream (gRPC client-side
health checking keeps one open per channel) never ends by itself. This interceptor counts the calls of
the tracked services (not health, not reflection); once none is left, `RunningServer.stop` ends the
Watch streams (`limits.CallLimits`) and stops gRPC gracefully.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import grpc

from embedder.grpc.handlers import wrap

if TYPE_CHECKING:  # the stubs' generic is not subscriptable at run time
    Handler = grpc.RpcMethodHandler[Any, Any]


class InflightTracker(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts running calls of the services named by `prefixes` (e.g. "/pkg.Service/")."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self._prefixes = prefixes
        self.active = 0
        self.started = 0  # calls ever started (the drain asks whether any came in meanwhile)
        self.last_seen = float("-inf")  # time.monotonic() when a tracked call last started or ended
        self._idle: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._idle is None:  # created on first use, inside the server's event loop
            self._idle = asyncio.Event()
            self._idle.set()
        return self._idle

    @asynccontextmanager
    async def _tracked(self, context: Any) -> AsyncIterator[None]:
        self.active += 1
        self.started += 1
        self.last_seen = time.monotonic()
        self._event().clear()
        try:
            yield
        finally:
            self.active -= 1
            self.last_seen = time.monotonic()
            if self.active == 0:
                self._event().set()

    def seen_within(self, seconds: float) -> bool:
        """Whether a tracked call was running at some point in the last `seconds`."""
        return self.active > 0 or time.monotonic() - self.last_seen <= seconds

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no tracked call is running; False if `timeout_s` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._event().wait()
        except TimeoutError:
            return False
        return True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(self._prefixes):
            return handler
        return wrap(handler, self._tracked)
