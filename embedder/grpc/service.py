"""The gRPC Embedder servicer: routes each call to the model version it names (the registry), counts it,
answers it.

Translation protobuf <-> core is in `translate.py`; the error -> status map in `status.py`; the drain
state is the core's `ServingGate`, shared with the engines. A call holds a `Lease` on its version while
it runs, so a version removed by a rollout drains it before closing. Unexpected errors become INTERNAL
with a request id; the trace goes to the log, never to the caller.

`requests_total` counts what the caller got (issue 14, defect 6): a call whose deadline passed (in the
queue, or while gRPC cancelled it) is DEADLINE_EXCEEDED, not CANCELLED; an answer ready only after the
deadline is DEADLINE_EXCEEDED, not OK (defect 7); a stream response is counted once it was handed to
the transport, and one that never was counts as CANCELLED.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from embedder.config import ServerConfig
from embedder.core.gate import ServingGate
from embedder.core.registry import ModelRegistry, SyncReport
from embedder.errors import DeadlineExceededError, InvalidInputError, NotSupportedError, ShuttingDownError
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
_LATE = "deadline passed before the answer was ready"
# A refusal held in the drain's last moment (see `hold_refusals`) is answered at least this long before
# the caller's deadline, so the caller hears UNAVAILABLE (retry elsewhere), not DEADLINE_EXCEEDED.
_REFUSAL_MARGIN_S = 0.05
# A cancellation this close to the deadline is the deadline's doing (gRPC's timer vs. our clock).
_DEADLINE_SLACK_S = 0.02


@dataclass
class _Call:
    """One call (or stream message) being answered: what its metrics are labelled and timed with."""

    method: str
    request_id: str
    started: float
    deadline: float | None
    model: str = NO_MODEL  # "name@version" once the registry has chosen the version


@dataclass
class _Outcome:
    """One stream message's answer, counted under `code` once it has been handed to the transport."""

    response: pb.EmbedResponse
    code: str
    call: _Call


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


class EmbedderService(pb_grpc.EmbedderServicer):
    """Embed, EmbedStream, GetModelInfo, Explain, ReloadModels over a registry of model versions."""

    def __init__(
        self,
        registry: ModelRegistry[ServedModel],
        metrics: Metrics,
        config: ServerConfig,
        gate: ServingGate,
        *,
        reload: Callable[[], Awaitable[SyncReport]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`reload` rolls the registry to its sources (ReloadModels); `clock` is the engines'
        (`time.monotonic`): deadlines are compared on it (a test seam)."""
        self.clock = clock
        self._released: asyncio.Event | None = None  # refusals wait while it is clear
        self._registry = registry
        self._reload = reload
        self._config = config
        self._metrics = metrics
        self._gate = gate
        self._stream_readers: set[asyncio.Task[None]] = set()
        # When the server drains, open streams stop reading: their in-flight messages are answered,
        # then the stream ends with UNAVAILABLE.
        self._gate.on_close(self._stop_reading_streams)

    def _stop_reading_streams(self) -> None:
        for task in list(self._stream_readers):
            task.cancel()

    def hold_refusals(self) -> None:
        """The drain's last moment: calls refused because the server is draining wait (within their
        deadline) for `release_refusals` instead of being answered at once. A closed-loop caller then
        has its call held, not a new one on its way, when gRPC stops: calls gRPC has received but not yet
        handed to us are cancelled by its stop (CANCELLED, which clients do not retry)."""
        self._released = asyncio.Event()

    def release_refusals(self) -> None:
        """gRPC's stop has begun (GOAWAY sent): answer the held refusals with UNAVAILABLE."""
        if self._released is not None:
            self._released.set()

    def _deadline(self, context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else self.clock() + remaining

    def _late(self, deadline: float | None) -> bool:
        return deadline is not None and self.clock() >= deadline

    def _call(self, method: str, request_id: str, context: grpc.aio.ServicerContext[Any, Any]) -> _Call:
        return _Call(method, request_id, self.clock(), self._deadline(context))

    async def Embed(  # noqa: N802 (gRPC method name)
        self,
        request: pb.EmbedRequest | None,
        context: grpc.aio.ServicerContext[pb.EmbedRequest, pb.EmbedResponse],
    ) -> pb.EmbedResponse:
        call = self._call("Embed", translate.request_id_of(request), context)
        response = await self._answer(call, partial(self._embed, request, call), context)
        self._observe_ok(call, response)
        return response

    async def EmbedStream(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[pb.EmbedRequest | None],
        context: grpc.aio.ServicerContext[pb.EmbedRequest, pb.EmbedResponse],
    ) -> AsyncIterator[pb.EmbedResponse]:
        """Messages run concurrently (so they batch together); responses come back in request order."""
        deadline = self._deadline(context)
        await self._abort_if_draining(context, deadline)
        inflight: asyncio.Queue[asyncio.Task[_Outcome] | None] = asyncio.Queue(
            maxsize=self._config.max_stream_inflight
        )
        reader = asyncio.get_running_loop().create_task(
            self._read_stream(request_iterator, inflight, deadline)
        )
        self._stream_readers.add(reader)
        reader.add_done_callback(self._stream_readers.discard)
        unsent: _Outcome | None = None
        try:
            while (task := await inflight.get()) is not None:
                unsent = await task
                yield unsent.response  # resumes only once the response was handed to the transport
                self._count_stream(unsent)
                unsent = None
        finally:
            if unsent is not None:  # the caller went away before it could get this one
                self._count_stream(_Outcome(unsent.response, self._gone_code(deadline), unsent.call))
            reader.cancel()
            while not inflight.empty():
                if (task := inflight.get_nowait()) is not None:
                    task.cancel()
        await self._abort_if_draining(context, deadline)
        if not reader.cancelled() and (exc := reader.exception()) is not None:
            raise exc

    async def GetModelInfo(  # noqa: N802 (gRPC method name)
        self,
        request: pb.GetModelInfoRequest | None,
        context: grpc.aio.ServicerContext[pb.GetModelInfoRequest, pb.ModelInfo],
    ) -> pb.ModelInfo:
        """The named (or default) model's facts and limits, and every loaded version in `models`."""
        call = self._call("GetModelInfo", translate.request_id_of(None), context)

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
        call = self._call("Explain", translate.request_id_of(request), context)
        response = await self._answer(call, partial(self._explain, request, call), context)
        self._observe(call, "OK")
        return response

    async def ReloadModels(  # noqa: N802 (gRPC method name)
        self,
        request: pb.ReloadModelsRequest | None,
        context: grpc.aio.ServicerContext[pb.ReloadModelsRequest, pb.ReloadModelsResponse],
    ) -> pb.ReloadModelsResponse:
        """Admin: roll to what the model sources hold now (the API-key interceptor guards it)."""
        call = self._call("ReloadModels", translate.request_id_of(None), context)

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

    async def _abort_if_draining(
        self, context: grpc.aio.ServicerContext[Any, Any], deadline: float | None
    ) -> None:
        if not self._gate.is_open:
            await self._until_released(deadline)
            code, message = status_for(ShuttingDownError(_RECONNECT), "")
            await context.abort(code, message)

    async def _until_released(self, deadline: float | None) -> None:
        """Wait while refusals are held (`hold_refusals`), but not into the caller's deadline."""
        released = self._released
        if released is None or released.is_set():
            return
        budget = None if deadline is None else deadline - self.clock() - _REFUSAL_MARGIN_S
        if budget is not None and budget <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(budget):
                await released.wait()

    def _gone_code(self, deadline: float | None) -> str:
        """How to count a call that ended without its answer: its deadline passed, or it cancelled.
        gRPC's deadline timer runs on its own clock and may fire a little before ours says it is time."""
        late = deadline is not None and self.clock() >= deadline - _DEADLINE_SLACK_S
        return "DEADLINE_EXCEEDED" if late else "CANCELLED"

    async def _answer(
        self, call: _Call, work: Callable[[], Awaitable[R]], context: grpc.aio.ServicerContext[Any, Any]
    ) -> R:
        """`work()`'s response for a unary call, once the gate lets it in, if it is ready before the
        deadline. A failure is counted under its status code and ends the call with that status and a
        message naming the request id; a cancellation counts as CANCELLED, or DEADLINE_EXCEEDED if the
        deadline is why gRPC cancelled it."""
        try:
            self._gate.check()
            response = await work()
            if self._late(call.deadline):  # gRPC may not have cancelled us yet: the caller has given up
                raise DeadlineExceededError(_LATE)
            return response
        except asyncio.CancelledError:
            self._observe(call, self._gone_code(call.deadline))
            raise
        except Exception as exc:
            if isinstance(exc, ShuttingDownError):
                await self._until_released(call.deadline)
            code, message = status_for(exc, call.request_id)
            self._observe(call, code.name)
            await context.abort(code, message)

    async def _explain(self, raw: pb.ExplainRequest | None, call: _Call) -> pb.ExplainResponse:
        request = translate.explain_request(raw)
        with self._registry.lease(request.model) as lease:
            call.model = lease.entry.key
            served = lease.model
            if served.explainer is None:
                raise NotSupportedError(unsupported_message(served.manifest))
            options = translate.explain_options(request)
            result = await served.explainer.run_async(
                request.query, request.candidate, options, call.deadline
            )
        return translate.explain_response(result, call.request_id, served.manifest, call.started)

    async def _embed(self, raw: pb.EmbedRequest | None, call: _Call) -> pb.EmbedResponse:
        options, encoding = translate.embed_request(raw)
        assert raw is not None  # embed_request refuses None
        with self._registry.lease(raw.model) as lease:
            call.model = lease.entry.key
            engine = lease.model.engine
            result = await engine.embed(raw.texts, options, call.deadline)
        return translate.embed_response(call.request_id, encoding, result, call.started, engine.manifest)

    async def _read_stream(
        self,
        requests: AsyncIterator[pb.EmbedRequest | None],
        inflight: asyncio.Queue[asyncio.Task[_Outcome] | None],
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

    async def _stream_message(self, request: pb.EmbedRequest | None, deadline: float | None) -> _Outcome:
        """One stream message; failures become the message's `error` field, and the stream goes on.
        Counted by `EmbedStream` once sent (or here, if the caller left before it was ready)."""
        call = _Call("EmbedStream", translate.request_id_of(request), self.clock(), deadline)
        try:
            response = await self._embed(request, call)
            if self._late(deadline):
                raise DeadlineExceededError(_LATE)
        except asyncio.CancelledError:  # the caller cancelled the stream or its deadline passed
            self._observe(call, self._gone_code(deadline))
            raise
        except Exception as exc:
            code, message = status_for(exc, call.request_id)
            error = pb.Error(code=code.value[0], message=message)
            return _Outcome(pb.EmbedResponse(request_id=call.request_id, error=error), code.name, call)
        return _Outcome(response, "OK", call)

    def _count_stream(self, outcome: _Outcome) -> None:
        if outcome.code == "OK":
            self._observe_ok(outcome.call, outcome.response)
        else:
            self._observe(outcome.call, outcome.code)

    def _observe(self, call: _Call, code: str, items: int = 0, tokens: int = 0) -> None:
        latency = self.clock() - call.started
        self._metrics.observe_request(call.method, code, latency, items, tokens, model=call.model)

    def _observe_ok(self, call: _Call, response: pb.EmbedResponse) -> None:
        self._observe(call, "OK", response.count, response.total_tokens)
        self._metrics.queue_wait.labels(model=call.model).observe(response.timing.queue_us / 1e6)
