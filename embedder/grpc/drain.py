"""In-flight accounting for the graceful drain: when has every accepted Embedder call been answered?

`grpc.aio.Server.stop(grace)` waits for every open RPC, and a health `Watch` stream (gRPC client-side
health checking keeps one open per channel) never ends by itself, so a drain would always last the
whole grace period. This interceptor counts the calls of the tracked services (not health, not
reflection); once none is left, `RunningServer.stop` closes what remains after a short tail.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # the stubs' generic is not subscriptable at run time
    Handler = grpc.RpcMethodHandler[Any, Any]

log = logging.getLogger(__name__)


class InflightTracker(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts running calls of the services named by `prefixes` (e.g. "/pkg.Service/")."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self._prefixes = prefixes
        self.active = 0
        self.started = 0  # calls ever started (the drain asks whether any came in meanwhile)
        self._idle: asyncio.Event | None = None

    def _event(self) -> asyncio.Event:
        if self._idle is None:  # created on first use, inside the server's event loop
            self._idle = asyncio.Event()
            self._idle.set()
        return self._idle

    def _enter(self) -> None:
        self.active += 1
        self.started += 1
        self._event().clear()

    def _exit(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._event().set()

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
        return self._wrap(handler)

    def _wrap(self, handler: Handler) -> Handler:
        codecs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary), **codecs)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(self._streaming(handler.stream_stream), **codecs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streaming(handler.unary_stream), **codecs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary), **codecs)
        return handler

    def _unary(self, behavior: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def tracked(request: Any, context: Any) -> Any:
            self._enter()
            try:
                return await behavior(request, context)
            finally:
                self._exit()

        return tracked

    def _streaming(self, behavior: Callable[..., Any]) -> Callable[..., Awaitable[None]]:
        async def tracked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            self._enter()
            try:
                responses = behavior(request, context)
                if inspect.isawaitable(responses):  # a handler that writes with context.write()
                    await responses
                    return
                try:
                    async for response in responses:
                        await write_or_cancel(context, response)
                finally:
                    await responses.aclose()  # its cleanup now, not whenever the loop finalizes it
            finally:
                self._exit()

        return tracked


async def write_or_cancel(context: grpc.aio.ServicerContext[Any, Any], response: Any) -> None:
    """Send one stream response; if it cannot be sent, the caller is gone: end the call as cancelled.

    Writing here rather than yielding to gRPC matters: a write that fails because the caller cancelled
    while its responses waited on flow control reaches gRPC before its own "client closed" notice, and
    gRPC then logs an ERROR traceback (`ExecuteBatchError raised in core by servicer method`). A caller
    going away is not an error. The handler's generator is closed at its `yield`, so code after the
    yield runs only for responses that were handed to the transport (docs/operations.md, "Logging").
    """
    try:
        await context.write(response)
    except Exception as exc:  # ExecuteBatchError, "RPC already finished", server stopped: not sent
        log.debug("stream response not sent (%s): the caller is gone", type(exc).__name__)
        raise asyncio.CancelledError from None
