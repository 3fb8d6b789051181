"""The gRPC Embedder servicer: routes each call to the model version it names (the registry), counts it,
answers it.

Translation protobuf <-> core is in `translate.py`; the error -> status map in `status.py`; the drain
state is the core's `ServingGate`, shared with the engines. A call holds a `Lease` on its version while
it runs, so a version removed by a rollout drains it before closing. Unexpected errors become INTERNAL with a
request id; the trace goes to the log, never to the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from embedder.config import ServerConfig
from embedder.core.gate import ServingGate
from embedder.core.registry import ModelRegistry, SyncReport
from embedder.errors import InvalidInputError, NotSupportedError, ShuttingDownError
from embedder.explain.explainer import unsupported_message
from embedder.grpc import translate
from embedder.grpc.served import ServedModel
from embedder.grpc.status import status_for
from embedder.metrics import NO_MODEL, Metrics
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
        "ReloadModels": grpc.unary_unary_rpc_method_handler(
            service.ReloadModels,
            request_deserializer=_lenient(pb.ReloadModelsRequest),
            response_serializer=pb.ReloadModelsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


@dataclass
class _Call:
    """One call (or stream message) being answered: what its metrics are labelled with."""

    method: str
    request_id: str
    started: float = field(default_factory=time.monotonic)
    model: str = NO_MODEL  # "name@version" once the registry has chosen the version


class EmbedderService(pb_grpc.EmbedderServicer):
    """Embed, EmbedStream, GetModelInfo, Explain, ReloadModels over a registry of model versions."""

    def __init__(
        self,
        registry: ModelRegistry[ServedModel],
        metrics: Metrics,
        config: ServerConfig,
        gate: ServingGate,
        reload: Callable[[], Awaitable[SyncReport]] | None = None,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._config = config
        self._gate = gate
        self._reload = reload
        self._stream_readers: set[asyncio.Task[None]] = set()
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
        call = _Call("Embed", translate.request_id_of(request))
        response = await self._answer(call, partial(self._embed, request, call, _deadline(context)), context)
        self._observe_ok(call, response)
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
        """The named (or default) model's facts and limits, and every loaded version in `models`."""
        call = _Call("GetModelInfo", translate.request_id_of(None))

        async def info() -> pb.ModelInfo:
            if request is None:
                raise InvalidInputError("request: not a valid GetModelInfoRequest")
            chosen = self._registry.resolve(request.model)
            call.model = chosen.key
            answer = self._model_info(chosen.model)
            answer.models.extend(self._model_info(e.model) for e in self._registry.entries())
            return answer

        response = await self._answer(call, info, context)
        self._observe(call, "OK")
        return response

    async def Explain(  # noqa: N802 (gRPC method name)
        self,
        request: pb.ExplainRequest | None,
        context: grpc.aio.ServicerContext[pb.ExplainRequest, pb.ExplainResponse],
    ) -> pb.ExplainResponse:
        """Token attribution (embedder/explain/): off the event loop, outside the scheduler."""
        call = _Call("Explain", translate.request_id_of(request))
        response = await self._answer(
            call, partial(self._explain, request, call, _deadline(context)), context
        )
        self._observe(call, "OK")
        return response

    async def ReloadModels(  # noqa: N802 (gRPC method name)
        self,
        request: pb.ReloadModelsRequest | None,
        context: grpc.aio.ServicerContext[pb.ReloadModelsRequest, pb.ReloadModelsResponse],
    ) -> pb.ReloadModelsResponse:
        """Admin: roll to what the model sources hold now (the API-key interceptor guards it)."""
        call = _Call("ReloadModels", translate.request_id_of(None))

        async def reload() -> pb.ReloadModelsResponse:
            if request is None:
                raise InvalidInputError("request: not a valid ReloadModelsRequest")
            if self._reload is None:
                raise NotSupportedError("this server has no model sources to reload")
            r = await self._reload()
            return pb.ReloadModelsResponse(added=r.added, removed=r.removed, loaded=r.loaded, errors=r.errors)

        response = await self._answer(call, reload, context)
        self._observe(call, "OK")
        return response

    # -- internals ------------------------------------------------------------------------------------

    def _model_info(self, served: ServedModel) -> pb.ModelInfo:
        entry = self._registry.resolve(served.key)
        return translate.model_info(
            served.engine,
            self._config,
            served.explainer is not None,
            is_default=self._registry.is_default(entry),
            is_name_default=self._registry.is_name_default(entry),
        )

    async def _abort_if_draining(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not self._gate.is_open:
            code, message = status_for(ShuttingDownError(_RECONNECT), "")
            await context.abort(code, message)

    async def _answer(
        self, call: _Call, work: Callable[[], Awaitable[R]], context: grpc.aio.ServicerContext[Any, Any]
    ) -> R:
        """`work()`'s response for a unary call, once the gate lets it in. A failure is counted under its
        status code and ends the call with that status and a message naming the request id; a
        cancellation counts as CANCELLED."""
        try:
            self._gate.check()
            return await work()
        except asyncio.CancelledError:
            self._observe(call, "CANCELLED")
            raise
        except Exception as exc:
            code, message = status_for(exc, call.request_id)
            self._observe(call, code.name)
            await context.abort(code, message)

    async def _explain(
        self, raw: pb.ExplainRequest | None, call: _Call, deadline: float | None
    ) -> pb.ExplainResponse:
        request = translate.explain_request(raw)
        with self._registry.lease(request.model) as lease:
            call.model = lease.entry.key
            served = lease.model
            if served.explainer is None:
                raise NotSupportedError(unsupported_message(served.manifest))
            options = translate.explain_options(request)
            result = await served.explainer.run_async(request.query, request.candidate, options, deadline)
        return translate.explain_response(result, call.request_id, served.manifest, call.started)

    async def _embed(
        self, raw: pb.EmbedRequest | None, call: _Call, deadline: float | None
    ) -> pb.EmbedResponse:
        options, encoding = translate.embed_request(raw)
        assert raw is not None  # embed_request refuses None
        with self._registry.lease(raw.model) as lease:
            call.model = lease.entry.key
            engine = lease.model.engine
            result = await engine.embed(raw.texts, options, deadline)
        return translate.embed_response(call.request_id, encoding, result, call.started, engine.manifest)

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
        call = _Call("EmbedStream", translate.request_id_of(request))
        try:
            response = await self._embed(request, call, deadline)
        except asyncio.CancelledError:  # the caller cancelled the stream or its deadline passed
            self._observe(call, "CANCELLED")
            raise
        except Exception as exc:
            code, message = status_for(exc, call.request_id)
            self._observe(call, code.name)
            return pb.EmbedResponse(
                request_id=call.request_id, error=pb.Error(code=code.value[0], message=message)
            )
        self._observe_ok(call, response)
        return response

    def _observe(self, call: _Call, code: str, items: int = 0, tokens: int = 0) -> None:
        latency = time.monotonic() - call.started
        self._metrics.observe_request(call.method, code, latency, items, tokens, model=call.model)

    def _observe_ok(self, call: _Call, response: pb.EmbedResponse) -> None:
        self._observe(call, "OK", response.count, response.total_tokens)
        self._metrics.queue_wait.labels(model=call.model).observe(response.timing.queue_us / 1e6)
