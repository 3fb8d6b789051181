"""The gRPC Embedder service: protobuf <-> engine, per-request metrics, and THE error-to-status mapping.

`status_for` is the one place where our error types become gRPC status codes. Unexpected errors become
INTERNAL with a request id; the trace goes to the log, never to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from embedder.encoding import ENCODINGS, pack, timing
from embedder.engine import EmbeddingEngine, EmbedOptions, EmbedResult
from embedder.errors import (
    DeadlineExceededError,
    EmbedderError,
    InvalidInputError,
    NotSupportedError,
    OverloadedError,
    ShuttingDownError,
    UnauthenticatedError,
)
from embedder.explainer import explain_response
from embedder.metrics import Metrics
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
R = TypeVar("R")

_STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (NotSupportedError, grpc.StatusCode.UNIMPLEMENTED),
)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Embedder"].full_name
# Caller-chosen ids are echoed and logged: keep them short and printable (no log injection).
MAX_REQUEST_ID_CHARS = 128


def status_for(exc: Exception, request_id: str) -> tuple[grpc.StatusCode, str]:
    """Map an exception to (status code, message for the caller). The only such mapping in the server."""
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code, str(exc)
    log.error("internal error, request_id=%s", request_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"


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


def request_id_of(request: pb.EmbedRequest | pb.ExplainRequest | None) -> str:
    """The caller's request id if it is usable (short, printable), else a generated one."""
    rid = request.request_id if request is not None else ""
    if 0 < len(rid) <= MAX_REQUEST_ID_CHARS and rid.isprintable():
        return rid
    return uuid.uuid4().hex[:16]


def check_request(request: pb.EmbedRequest | None) -> pb.EmbedRequest:
    """Raise `InvalidInputError` for what the engine cannot see: undecodable bytes, a bad request_id."""
    if request is None:
        raise InvalidInputError(
            "request: not a valid EmbedRequest (e.g. a text that is not valid UTF-8); "
            "texts must be UTF-8 strings"
        )
    check_request_id(request.request_id)
    return request


def check_request_id(rid: str) -> None:
    if len(rid) > MAX_REQUEST_ID_CHARS or not rid.isprintable():
        raise InvalidInputError(
            f"request_id: must be at most {MAX_REQUEST_ID_CHARS} printable characters "
            f"(got {len(rid)} characters)"
        )


def options_from(request: pb.EmbedRequest) -> EmbedOptions:
    return EmbedOptions(
        normalize=request.normalize if request.HasField("normalize") else True,
        dimensions=request.dimensions,
        truncate=request.truncate if request.HasField("truncate") else True,
        encoding=int(request.encoding),
    )


def _deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class EmbedderService(pb_grpc.EmbedderServicer):
    """Embed, EmbedStream, GetModelInfo, Explain over one `EmbeddingEngine`."""

    def __init__(self, engine: EmbeddingEngine, metrics: Metrics) -> None:
        self._engine = engine
        self._metrics = metrics
        self._draining = False
        self._stream_readers: set[asyncio.Task[None]] = set()
        self._model_info = self._build_model_info()

    def start_draining(self) -> None:
        """New calls and new stream messages get UNAVAILABLE; stream readers stop reading."""
        self._draining = True
        for task in list(self._stream_readers):
            task.cancel()

    async def Embed(  # noqa: N802 (gRPC method name)
        self,
        request: pb.EmbedRequest | None,
        context: grpc.aio.ServicerContext[pb.EmbedRequest, pb.EmbedResponse],
    ) -> pb.EmbedResponse:
        started = time.monotonic()
        request_id = request_id_of(request)
        work = self._embed(request, request_id, started, _deadline(context))
        response = await self._answer("Embed", work, context, request_id, started)
        self._observe_ok("Embed", response, started)
        return response

    async def EmbedStream(  # noqa: N802 (gRPC method name)
        self,
        request_iterator: AsyncIterator[pb.EmbedRequest | None],
        context: grpc.aio.ServicerContext[pb.EmbedRequest, pb.EmbedResponse],
    ) -> AsyncIterator[pb.EmbedResponse]:
        """Messages run concurrently (so they batch together); responses come back in request order."""
        if self._draining:
            code, message = status_for(ShuttingDownError("server is shutting down; reconnect elsewhere"), "")
            await context.abort(code, message)
        inflight: asyncio.Queue[asyncio.Task[pb.EmbedResponse] | None] = asyncio.Queue(
            maxsize=self._engine.config.max_stream_inflight
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
        if self._draining:
            code, message = status_for(ShuttingDownError("server is shutting down; reconnect elsewhere"), "")
            await context.abort(code, message)
        if not reader.cancelled() and (exc := reader.exception()) is not None:
            raise exc

    async def GetModelInfo(  # noqa: N802 (gRPC method name)
        self,
        request: pb.GetModelInfoRequest | None,
        context: grpc.aio.ServicerContext[pb.GetModelInfoRequest, pb.ModelInfo],
    ) -> pb.ModelInfo:
        started = time.monotonic()
        error: EmbedderError | None = None
        if request is None:
            error = InvalidInputError("request: not a valid GetModelInfoRequest")
        elif self._draining:
            error = ShuttingDownError("server is shutting down")
        if error is not None:
            code, message = status_for(error, request_id_of(None))
            self._metrics.observe_request("GetModelInfo", code.name, time.monotonic() - started)
            await context.abort(code, message)
        self._metrics.observe_request("GetModelInfo", "OK", time.monotonic() - started)
        return self._model_info

    async def Explain(  # noqa: N802 (gRPC method name)
        self,
        request: pb.ExplainRequest | None,
        context: grpc.aio.ServicerContext[pb.ExplainRequest, pb.ExplainResponse],
    ) -> pb.ExplainResponse:
        """Token attribution (embedder/explainer.py): off the event loop, outside the batcher."""
        started = time.monotonic()
        request_id = request_id_of(request)
        work = self._explain(request, request_id, started, _deadline(context))
        response = await self._answer("Explain", work, context, request_id, started)
        self._metrics.observe_request("Explain", "OK", time.monotonic() - started)
        return response

    # -- internals ------------------------------------------------------------------------------------

    async def _answer(
        self,
        method: str,
        work: Awaitable[R],
        context: grpc.aio.ServicerContext[Any, Any],
        request_id: str,
        started: float,
    ) -> R:
        """`work`'s response for a unary call. A failure is counted under its status code and ends the
        call with that status and a message naming the request id; a cancellation counts as CANCELLED."""
        try:
            return await work
        except asyncio.CancelledError:
            self._metrics.observe_request(method, "CANCELLED", time.monotonic() - started)
            raise
        except Exception as exc:
            code, message = status_for(exc, request_id)
            self._metrics.observe_request(method, code.name, time.monotonic() - started)
            await context.abort(code, message)

    async def _explain(
        self, request: pb.ExplainRequest | None, request_id: str, started: float, deadline: float | None
    ) -> pb.ExplainResponse:
        if self._draining:
            raise ShuttingDownError("server is shutting down; retry on another replica")
        if request is None:
            raise InvalidInputError(
                "request: not a valid ExplainRequest (e.g. a text that is not valid UTF-8)"
            )
        check_request_id(request.request_id)
        return await explain_response(
            self._engine.explainer,
            self._engine.manifest,
            request,
            request_id=request_id,
            started=started,
            deadline=deadline,
        )

    async def _embed(
        self, raw: pb.EmbedRequest | None, request_id: str, started: float, deadline: float | None
    ) -> pb.EmbedResponse:
        if self._draining:
            raise ShuttingDownError("server is shutting down; retry on another replica")
        request = check_request(raw)
        options = options_from(request)
        result = await self._engine.embed(request.texts, options, deadline)
        return self._response(request_id, options, result, started)

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
        request_id = request_id_of(request)
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

    def _response(
        self, request_id: str, options: EmbedOptions, result: EmbedResult, started: float
    ) -> pb.EmbedResponse:
        packed = pack(result.embeddings, options.encoding)
        count, dim = result.embeddings.shape
        return pb.EmbedResponse(
            request_id=request_id,
            dim=dim,
            count=count,
            encoding=options.encoding,  # type: ignore[arg-type]
            embeddings=packed.data,
            scales=packed.scales,
            token_counts=result.token_counts,
            total_tokens=sum(result.token_counts),
            timing=timing(result.tokenize_s, result.queue_s, result.inference_s, started),
            model=self._engine.manifest.name,
        )

    def _observe_ok(self, method: str, response: pb.EmbedResponse, started: float) -> None:
        self._metrics.observe_request(
            method, "OK", time.monotonic() - started, items=response.count, tokens=response.total_tokens
        )
        self._metrics.queue_wait.observe(response.timing.queue_us / 1e6)

    def _build_model_info(self) -> pb.ModelInfo:
        m = self._engine.manifest
        cfg = self._engine.config
        limits = pb.ServerLimits(
            max_texts_per_request=cfg.max_texts_per_request,
            max_text_chars=cfg.max_text_chars,
            max_batch_items=cfg.max_batch_items,
            max_batch_tokens=cfg.max_batch_tokens,
            max_wait_ms=cfg.max_wait_ms,
            max_queued_items=cfg.max_queued_items,
            max_receive_message_bytes=cfg.max_receive_message_bytes,
            workers=self._engine.workers,
        )
        return pb.ModelInfo(
            name=m.name,
            version=m.version,
            dim=m.dim,
            max_tokens=m.max_tokens,
            matryoshka_dims=m.matryoshka_dims,
            parameters=m.parameters,
            architecture=m.architecture,
            metrics={k: float(v) for k, v in m.metrics.items()},
            sha256=m.sha256,
            limits=limits,
            encodings=list(ENCODINGS),
            supports_explain=self._engine.explainer is not None,
        )
