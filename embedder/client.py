"""Python client for the ranking pipeline: `EmbedderClient` (blocking) and `AsyncEmbedderClient` (asyncio).

`embed(texts)` returns a float32 numpy array [len(texts), dim]. It splits long lists into requests of at
most the server's `max_texts_per_request` (asked once via GetModelInfo), runs them concurrently over
several server addresses in round-robin, and retries UNAVAILABLE / RESOURCE_EXHAUSTED (and a CANCELLED
it did not ask for) with exponential backoff and full jitter, all within one overall deadline per `embed`
call. Other errors raise `grpc.RpcError` at once. `model="name@version"` pins a model version (vectors of
two versions live in different spaces); `model_info().models` lists what the server has loaded. TLS, mTLS
and an API key: pass `security=ChannelSecurity(...)` (channel.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from embedder.channel import ChannelSecurity
from embedder.grpc.encoding import unpack
from embedder.options import RequestOptions
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc

FloatArray = npt.NDArray[np.float32]
# CANCELLED too: these clients never cancel a call themselves (their own deadline is DEADLINE_EXCEEDED,
# a cancelled asyncio task raises CancelledError), so a CANCELLED status comes from the far end: a server
# whose gRPC stop cut off a call that had just arrived (a rolling restart). Embed and GetModelInfo are
# idempotent, so trying again elsewhere is safe. The Node client (clients/node) has the same codes and
# ClientOptions' defaults; tests/integration/test_node_retries.py fails if the two drift apart.
RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
)


@dataclass(frozen=True, kw_only=True)
class ClientOptions(RequestOptions):
    """Request options (`cache=False`: bypass the servers' embedding cache) and the retry policy shared
    by both clients."""

    encoding: int = pb.ENCODING_FLOAT32
    # Overall time budget of one `embed()` call, retries included.
    timeout_s: float = 30.0
    max_attempts: int = 5
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    # None = ask the server (GetModelInfo) once.
    max_texts_per_request: int | None = None
    max_concurrent_requests: int = 4
    # Which model: "name", "name@version" (pinned: vectors stay in one space), "" = the server's default.
    model: str = ""
    # Connections opened to each address, taken in turn: a server of several processes (`serve
    # --processes N`) gets each connection's calls in one process, so N or more reach them all.
    connections_per_address: int = 1

    def backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**attempt)]."""
        return random.uniform(0.0, min(self.backoff_max_s, self.backoff_initial_s * 2.0**attempt))

    def request(self, texts: Sequence[str]) -> pb.EmbedRequest:
        return pb.EmbedRequest(
            texts=texts,
            normalize=self.normalize,
            dimensions=self.dimensions,
            truncate=self.truncate,
            cache=self.cache,
            encoding=self.encoding,  # type: ignore[arg-type]
            model=self.model,
        )


def _with_model(options: ClientOptions, model: str | None) -> ClientOptions:
    return options if model is None else dataclasses.replace(options, model=model)


def decode(response: pb.EmbedResponse) -> FloatArray:
    """Embeddings of one response as float32 [count, dim]."""
    return unpack(response.embeddings, response.encoding, response.count, response.dim, list(response.scales))


def _chunks(texts: Sequence[str], size: int) -> list[Sequence[str]]:
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def _addresses(addresses: str | Sequence[str]) -> list[str]:
    found = [addresses] if isinstance(addresses, str) else list(addresses)
    if not found:
        raise ValueError("at least one server address is needed")
    return found


def _connections(
    addresses: str | Sequence[str], per_address: int, channel_options: Sequence[tuple[str, Any]]
) -> list[tuple[str, list[tuple[str, Any]]]]:
    """(address, channel options) of every connection, the addresses interleaved (A, B, A, B, ...) so
    that a retry, which takes the next one, goes to another address. Several per address: each its own
    connection (gRPC otherwise shares one between channels of equal target and options)."""
    if per_address < 1:
        raise ValueError(f"connections_per_address must be >= 1 (got {per_address})")
    own = [("grpc.use_local_subchannel_pool", 1)] if per_address > 1 else []
    return [(a, [*channel_options, *own]) for _ in range(per_address) for a in _addresses(addresses)]


def _should_retry(
    exc: grpc.RpcError, attempt: int, opts: ClientOptions, deadline: float, pause: float
) -> bool:
    code_of = getattr(
        exc, "code", None
    )  # sync errors are grpc.Call; aio's AioRpcError is not, but has code()
    code = code_of() if callable(code_of) else None
    return code in RETRYABLE and attempt + 1 < opts.max_attempts and time.monotonic() + pause < deadline


class _Shared:
    """What both clients share: options, the address rotation, the retry rule, how `embed` is split.

    The two clients differ only in how they wait (threads and `time.sleep`, or `await`); their `_call`
    and `embed` are the same steps around these helpers.
    """

    def __init__(
        self, options: ClientOptions | None, model: str | None, security: ChannelSecurity | None
    ) -> None:
        self.options = _with_model(options or ClientOptions(), model)
        self._security = security or ChannelSecurity()
        self._metadata = self._security.metadata()
        self._stubs: list[Any] = []
        self._next = itertools.cycle([0])
        self._lock = threading.Lock()
        self._info: pb.ModelInfo | None = None

    def _use(self, channels: Sequence[Any]) -> None:
        self._stubs = [pb_grpc.EmbedderStub(c) for c in channels]  # type: ignore[no-untyped-call]
        self._next = itertools.cycle(range(len(self._stubs)))

    def _first(self) -> int:
        with self._lock:
            return next(self._next)

    def _attempt(self, first: int, attempt: int, deadline: float) -> tuple[Any, float]:
        """The stub and timeout of one attempt. Each call walks the addresses from its own start: taking
        the shared rotation per attempt could send every retry of a call back to the same dead address
        while other callers take the others."""
        return self._stubs[(first + attempt) % len(self._stubs)], max(0.001, deadline - time.monotonic())

    def _pause(self, exc: grpc.RpcError, attempt: int, deadline: float) -> float:
        """Seconds to wait before the next attempt; raises `exc` if it is not to be retried."""
        pause = self.options.backoff_s(attempt)
        if not _should_retry(exc, attempt, self.options, deadline, pause):
            raise exc
        return pause

    def _info_request(self) -> tuple[pb.GetModelInfoRequest, float]:
        return pb.GetModelInfoRequest(model=self.options.model), time.monotonic() + self.options.timeout_s

    def _split(self, texts: Sequence[str], info: pb.ModelInfo) -> list[Sequence[str]]:
        size = self.options.max_texts_per_request or info.limits.max_texts_per_request or 64
        return _chunks(texts, size)

    def _none(self, info: pb.ModelInfo) -> FloatArray:
        return np.zeros((0, self.options.dimensions or info.dim), dtype=np.float32)


class EmbedderClient(_Shared):
    """Blocking client; thread-safe. Use as a context manager or call `close()`."""

    def __init__(
        self,
        addresses: str | Sequence[str],
        options: ClientOptions | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        security: ChannelSecurity | None = None,
        model: str | None = None,
    ) -> None:
        """`security`: TLS / mTLS and an API key (embedder/channel.py); default plaintext, no key.
        `model` ("name" or "name@version") overrides `options.model`."""
        super().__init__(options, model, security)
        per = self.options.connections_per_address
        self._channels = [
            self._security.channel(a, o) for a, o in _connections(addresses, per, channel_options)
        ]
        self._use(self._channels)
        self._pool: ThreadPoolExecutor | None = None

    def _call(self, method: str, request: Any, deadline: float) -> Any:
        """One RPC with retries on UNAVAILABLE/RESOURCE_EXHAUSTED; each attempt goes to the next address."""
        first = self._first()
        for attempt in itertools.count():
            stub, timeout = self._attempt(first, attempt, deadline)
            try:
                return getattr(stub, method)(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                time.sleep(self._pause(exc, attempt, deadline))
        raise AssertionError("unreachable")  # itertools.count() never ends

    def model_info(self) -> pb.ModelInfo:
        """This client's model and the server's limits (asked once, then cached); `.models` lists every
        model/version the server has loaded."""
        if self._info is None:
            self._info = self._call("GetModelInfo", *self._info_request())
        return self._info

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Embed `texts` in order; float32 [len(texts), dim]."""
        deadline = time.monotonic() + self.options.timeout_s
        info = self.model_info()
        chunks = self._split(texts, info)
        if not chunks:
            return self._none(info)

        def one(chunk: Sequence[str]) -> FloatArray:
            return decode(self._call("Embed", self.options.request(chunk), deadline))

        if len(chunks) == 1:
            return one(chunks[0])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.options.max_concurrent_requests, thread_name_prefix="embed-client"
            )
        return np.concatenate(list(self._pool.map(one, chunks)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> EmbedderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEmbedderClient(_Shared):
    """asyncio client; create and use it inside one running event loop. The same as `EmbedderClient`,
    awaited."""

    def __init__(
        self,
        addresses: str | Sequence[str],
        options: ClientOptions | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        security: ChannelSecurity | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(options, model, security)
        per = self.options.connections_per_address
        connections = _connections(addresses, per, channel_options)
        self._channels = [self._security.aio_channel(a, o) for a, o in connections]
        self._use(self._channels)

    async def _call(self, method: str, request: Any, deadline: float) -> Any:
        first = self._first()
        for attempt in itertools.count():
            stub, timeout = self._attempt(first, attempt, deadline)
            try:
                return await getattr(stub, method)(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as exc:
                await asyncio.sleep(self._pause(exc, attempt, deadline))
        raise AssertionError("unreachable")

    async def model_info(self) -> pb.ModelInfo:
        """As `EmbedderClient.model_info`."""
        if self._info is None:
            self._info = await self._call("GetModelInfo", *self._info_request())
        return self._info

    async def embed(self, texts: Sequence[str]) -> FloatArray:
        """Embed `texts` in order; float32 [len(texts), dim]."""
        deadline = time.monotonic() + self.options.timeout_s
        info = await self.model_info()
        chunks = self._split(texts, info)
        if not chunks:
            return self._none(info)
        gate = asyncio.Semaphore(self.options.max_concurrent_requests)

        async def one(chunk: Sequence[str]) -> FloatArray:
            async with gate:
                return decode(await self._call("Embed", self.options.request(chunk), deadline))

        parts = await asyncio.gather(*(one(c) for c in chunks))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(grace=None)

    async def __aenter__(self) -> AsyncEmbedderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
