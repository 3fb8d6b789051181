"""The gRPC Embedder servicer: routes calls to the engine and explainer, counts them, answers them.

Translation protobuf <-> core is in `translate.py`; the error -> status map in `status.py`; the drain
state is the core's `ServingGate`, shared with the engine. Unexpected errors become INTERNAL with a
request id; the trace goes to the log, never to the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from embedder.config import ServerConfig
from embedder.core.engine import EmbeddingEngine
from embedder.core.gate import ServingGate
from embedder.errors import InvalidInputError, NotSupportedError, ShuttingDownError
from embedder.explain.explainer import Explainer, unsupported_message
from embedder.grpc import translate
from embedder.grpc.status import status_for
from embedder.metrics import Metrics
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc

R = TypeVar("R")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Embedder"].full_name
_RECONNECT = "server is shutting down; reconnect elsewhere"


def _lenient(kind: type[Message]) -> Any:
    """A deserializer that returns None for undecodable bytes (e.g. invalid UTF-8 in a string field):
    the handler then answers INVALID_ARGUMENT, where gRPC itself would give an opaque UNKNOWN."""

    def parse(data: bytes) -> Message | None:
        try:
            return kind.FromString(data)
        except DecodeError:
            return None

    return parse


def add_to_server(service: EmbedderService, server: grpc.aio.Server) -> None:
    """Register the Embedder service with the lenient request parsers (instead of the generated ones)."""
    embed_request = _lenient(pb.EmbedRequest)
    handlers = {
        "Embed": grpc.unary_unary_rpc_method_handler(
            service.Embed,
            request_deserializer=embed_request,
            response_serializer=pb.EmbedResponse.SerializeToString,
        ),
        "EmbedStream": grpc.stream_stream_rpc_method_handler(
            service.EmbedStream,
            request_deserializer=embed_request,
            response_serializer=pb.EmbedResponse.SerializeToString,
        ),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            service.GetModelInfo,
            request_deserializer=_lenient(pb.GetModelInfoRequest),
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
        "Explain": grpc.unary_unary_rpc_method_handler(
            service.Explain,
            request_deserializer=_lenient(pb.ExplainRequest),
            response_serializer=pb.ExplainResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class EmbedderService(pb_grpc.EmbedderServicer):
    """Embed, EmbedStream, GetModelInfo, Explain over one `EmbeddingEngine` (and its explainer, if any)."""

    def __init__(
        self,
        engine: EmbeddingEngine,
        metrics: Metrics,
        *,
        explainer: Explainer | None = None,
        config: ServerConfig | None = None,
        gate: ServingGate | None = None,
    ) -> None:
        self._engine = engine
        self._explainer = explainer
        self._config = config or engine.config
        self._metrics = metrics
        self._gate = gate or engine.gate
        self._stream_readers: set[asyncio.Task[None]] = set()
        self._model_info = translate.model_info(engine, self._config, explainer is not None)
        # When the server drains, open streams stop reading: their in-flight messages are answered,
        # then the stream ends with UNAVAILABLE.
        self._gate.on_close(self._stop_reading_streams)

    def _stop_reading_streams(self) -> None:
        for task in list(self._stream_readers):
            task.cancel()

    async def Embed(  # noqa: N802 (gRPC method name)
        self,
        request: pb.EmbedRequest | None,
        context: grpc.aio.ServicerContext[pb.EmbedRequest, pb.EmbedResponse],
    ) -> pb.EmbedResponse:
        started = time.monotonic()
        request_id = translate.request_id_of(request)
        work = partial(self._embed, request, request_id, started, _deadline(context))
        response = await self._answer("Embed", work, context, request_id, started)
        self._observe_ok("Embed", response, started)
        return response

    async def EmbedStream(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[pb.EmbedRequest | None],
        context: grpc.aio.ServicerContext[pb.EmbedRequest, pb.EmbedResponse],
    ) -> AsyncIterator[pb.EmbedResponse]:
        """Messages run concurrently (so they batch together); responses come back in request order."""
        await self._abort_if_draining(context)
        inflight: asyncio.Queue[asyncio.Task[pb.EmbedResponse] | None] = asyncio.Queue(
            maxsize=self._config.max_stream_inflight
        )
        deadline = _deadline(context)
        reader = asyncio.get_running_loop().create_task(
            self._read_stream(request_iterator, inflight, deadline)
        )
        self._stream_readers.add(reader)
        reader.add_done_callback(self._stream_readers.discard)
        try:
            while (task := await inflight.get()) is not None:
                yield await task
        finally:
            reader.cancel()
            while not inflight.empty():
                if (task := inflight.get_nowait()) is not None:
                    task.cancel()
        await self._abort_if_draining(context)
        if not reader.cancelled() and (exc := reader.exception()) is not None:
            raise exc

    async def GetModelInfo(  # noqa: N802 (gRPC method name)
        self,
        request: pb.GetModelInfoRequest | None,
        context: grpc.aio.ServicerContext[pb.GetModelInfoRequest, pb.ModelInfo],
    ) -> pb.ModelInfo:
        started = time.monotonic()

        async def info() -> pb.ModelInfo:
            if request is None:
                raise InvalidInputError("request: not a valid GetModelInfoRequest")
            return self._model_info

        response = await self._answer("GetModelInfo", info, context, translate.request_id_of(None), started)
        self._metrics.observe_request("GetModelInfo", "OK", time.monotonic() - started)
        return response

    async def Explain(  # noqa: N802 (gRPC method name)
        self,
        request: pb.ExplainRequest | None,
        context: grpc.aio.ServicerContext[pb.ExplainRequest, pb.ExplainResponse],
    ) -> pb.ExplainResponse:
        """Token attribution (embedder/explain/): off the event loop, outside the scheduler."""
        started = time.monotonic()
        request_id = translate.request_id_of(request)
        work = partial(self._explain, request, request_id, started, _deadline(context))
        response = await self._answer("Explain", work, context, request_id, started)
        self._metrics.observe_request("Explain", "OK", time.monotonic() - started)
        return response

    # -- internals ------------------------------------------------------------------------------------

    async def _abort_if_draining(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not self._gate.is_open:
            code, message = status_for(ShuttingDownError(_RECONNECT), "")
            await context.abort(code, message)

    async def _answer(
        self,
        method: str,
        work: Callable[[], Awaitable[R]],
        context: grpc.aio.ServicerContext[Any, Any],
        request_id: str,
        started: float,
    ) -> R:
        """`work()`'s response for a unary call, once the gate lets it in. A failure is counted under its
        status code and ends the call with that status and a message naming the request id; a
        cancellation counts as CANCELLED."""
        try:
            self._gate.check()
            return await work()
        except asyncio.CancelledError:
            self._metrics.observe_request(method, "CANCELLED", time.monotonic() - started)
            raise
        except Exception as exc:
            code, message = status_for(exc, request_id)
            self._metrics.observe_request(method, code.name, time.monotonic() - started)
            await context.abort(code, message)

    async def _explain(
        self, raw: pb.ExplainRequest | None, request_id: str, started: float, deadline: float | None
    ) -> pb.ExplainResponse:
        request = translate.explain_request(raw)
        manifest = self._engine.manifest
        if self._explainer is None:
            raise NotSupportedError(unsupported_message(manifest))
        options = translate.explain_options(request)
        result = await self._explainer.run_async(request.query, request.candidate, options, deadline)
        return translate.explain_response(result, request_id, manifest.name, started)

    async def _embed(
        self, raw: pb.EmbedRequest | None, request_id: str, started: float, deadline: float | None
    ) -> pb.EmbedResponse:
        options, encoding = translate.embed_request(raw)
        assert raw is not None  # embed_request refuses None
        result = await self._engine.embed(raw.texts, options, deadline)
        return translate.embed_response(request_id, encoding, result, started, self._engine.manifest.name)

    async def _read_stream(
        self,
        requests: AsyncIterator[pb.EmbedRequest | None],
        inflight: asyncio.Queue[asyncio.Task[pb.EmbedResponse] | None],
        deadline: float | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for request in requests:
                task = loop.create_task(self._stream_message(request, deadline))
                try:
                    await inflight.put(task)
                except asyncio.CancelledError:
                    task.cancel()
                    raise
        finally:
            # The queue may be full; the sentinel must still get in or the writer waits forever.
            while True:
                try:
                    inflight.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    await asyncio.sleep(0.001)

    async def _stream_message(
        self, request: pb.EmbedRequest | None, deadline: float | None
    ) -> pb.EmbedResponse:
        """One stream message; failures become the message's `error` field, and the stream goes on."""
        started = time.monotonic()
        request_id = translate.request_id_of(request)
        try:
            response = await self._embed(request, request_id, started, deadline)
        except asyncio.CancelledError:  # the caller cancelled the stream or its deadline passed
            self._metrics.observe_request("EmbedStream", "CANCELLED", time.monotonic() - started)
            raise
        except Exception as exc:
            code, message = status_for(exc, request_id)
            self._metrics.observe_request("EmbedStream", code.name, time.monotonic() - started)
            return pb.EmbedResponse(
                request_id=request_id, error=pb.Error(code=code.value[0], message=message)
            )
        self._observe_ok("EmbedStream", response, started)
        return response

    def _observe_ok(self, method: str, response: pb.EmbedResponse, started: float) -> None:
        self._metrics.observe_request(
            method, "OK", time.monotonic() - started, items=response.count, tokens=response.total_tokens
        )
        self._metrics.queue_wait.observe(response.timing.queue_us / 1e6)
