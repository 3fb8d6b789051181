"""Wrapping gRPC method handlers: run code around every call of a method, and write stream responses.

The interceptors (`drain.InflightTracker`, `limits.CallLimits`) each wrap the handler gRPC resolved in an
async context manager that is entered when the call's behaviour starts and left when it ends, whatever
the kind of method. A streaming behaviour's responses are written here (`write_or_cancel`), not yielded
back to gRPC, so that a caller who went away ends the call as cancelled instead of an ERROR in the log.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # the stubs' generics are not subscriptable at run time
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]

log = logging.getLogger(__name__)

# Called with the call's context when its behaviour starts; its context manager spans the behaviour.
Around = Callable[["Context"], AbstractAsyncContextManager[None]]


def wrap(handler: Handler, around: Around) -> Handler:
    """`handler` with `around(context)` entered for the whole of each call (async handlers only)."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None and _is_async(handler.unary_unary):
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, around), **codecs)
    if handler.stream_unary is not None and _is_async(handler.stream_unary):
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, around), **codecs)
    if handler.stream_stream is not None and _is_async(handler.stream_stream):
        return grpc.stream_stream_rpc_method_handler(_streaming(handler.stream_stream, around), **codecs)
    if handler.unary_stream is not None and _is_async(handler.unary_stream):
        return grpc.unary_stream_rpc_method_handler(_streaming(handler.unary_stream, around), **codecs)
    return handler  # a sync handler runs in gRPC's thread pool; none of ours is one


def refusing(handler: Handler, refusal: Callable[[], tuple[grpc.StatusCode, str]]) -> Handler:
    """A handler of `handler`'s kind that only ends the call with `refusal()`'s status and message.

    A response-streaming call ends by setting its status and returning: `context.abort` raises, and
    unwinding that exception cost the event loop ~0.1 ms per refusal, 9% of its time under a flood of
    refused health Watch streams (issue 14's mixed attack). A unary call must abort (it owes a response)."""

    async def behavior(request: Any, context: Context) -> None:
        code, message = refusal()
        if handler.response_streaming:
            context.set_code(code)
            context.set_details(message)
            return
        await context.abort(code, message)

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **codecs)
    return grpc.unary_unary_rpc_method_handler(behavior, **codecs)


def _is_async(behavior: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def _unary(behavior: Callable[..., Any], around: Around) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: Context) -> Any:
        async with around(context):
            return await behavior(request, context)

    return wrapped


def _streaming(behavior: Callable[..., Any], around: Around) -> Callable[..., Awaitable[None]]:
    async def wrapped(request: Any, context: Context) -> None:
        async with around(context):
            await run_stream(behavior, request, context)

    return wrapped


async def run_stream(behavior: Callable[..., Any], request: Any, context: Context) -> None:
    """Run a streaming behaviour to its end: an async generator's responses are written here; a
    coroutine (one that writes with `context.write`, or another wrapper) is awaited."""
    responses = behavior(request, context)
    if inspect.isawaitable(responses):
        await responses
        return
    try:
        async for response in responses:
            await write_or_cancel(context, response)
    finally:
        await responses.aclose()  # its cleanup now, not whenever the loop finalizes it


async def write_or_cancel(context: Context, response: Any) -> None:
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
