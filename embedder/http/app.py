"""The HTTP front's aiohttp application and its lifecycle, on the gRPC server's event loop.

Routes: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{id}` (OpenAI's shapes, API key needed
when keys are configured), `GET /healthz` (liveness: the process answers) and `GET /readyz` (readiness:
200 while serving, 503 while draining or after inference became untrustworthy). A request's `model`
means what gRPC's does (the registry: `name`, `name@version`, or "" for the default), and the work runs
on that version's `EmbeddingEngine` under a lease, so both fronts share the batcher, the limits, the
queue bound, the cache and rollouts. Errors are mapped in `status.py`; requests are counted in
`requests_total{method="http.<route>", model}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from embedder.config import ServerConfig
from embedder.core.bundle import Manifest
from embedder.core.engine import EmbeddingEngine
from embedder.core.gate import ServingGate
from embedder.core.registry import ModelRegistry
from embedder.errors import ConfigError, InvalidInputError, UnauthenticatedError
from embedder.http import openai
from embedder.http.status import BodyTooLargeError, error_for
from embedder.metrics import NO_MODEL, Metrics

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KeyCheck = Callable[[str | None], bool]
_BEARER = "bearer "
_OPEN_PATHS = ("/healthz", "/readyz")
MAX_BODY = web.AppKey("max_body", int)
# Responses with more values than this are serialised in a thread (a few ms of json.dumps on the loop).
_INLINE_JSON_VALUES = 16_384


class Served(Protocol):
    """What the HTTP front needs of a loaded version (the gRPC front's `ServedModel` has it)."""

    @property
    def engine(self) -> EmbeddingEngine: ...

    @property
    def manifest(self) -> Manifest: ...

    def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class HttpFront:
    """A started HTTP front; `stop()` closes its listener and lets running requests finish."""

    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


class EmbeddingsApi:
    """The route handlers over the server's model registry."""

    def __init__(
        self,
        registry: ModelRegistry[Any],
        metrics: Metrics,
        gate: ServingGate,
        ready: Callable[[], bool],
        created: int,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._gate = gate
        self._ready = ready
        self._created = created

    async def embeddings(self, request: web.Request) -> web.Response:
        started, request_id, model = time.monotonic(), secrets.token_hex(8), NO_MODEL
        try:
            self._gate.check()
            parsed = openai.parse_request(await _json(request))
            with self._registry.lease(parsed.model) as lease:
                model = lease.entry.key
                served: Served = lease.model
                result = await served.engine.embed(parsed.texts, parsed.options, None)
        except Exception as exc:
            return self._error("http.embeddings", exc, request_id, started, model)
        body = openai.response_body(result, model, parsed.encoding_format)
        # Writing thousands of floats as JSON takes milliseconds: off the loop, which gRPC calls share.
        big = result.embeddings.size > _INLINE_JSON_VALUES
        text = await asyncio.to_thread(json.dumps, body) if big else json.dumps(body)
        tokens, items = body["usage"]["total_tokens"], len(parsed.texts)
        elapsed = time.monotonic() - started
        self._metrics.observe_request("http.embeddings", "OK", elapsed, items, tokens, model=model)
        return web.Response(text=text, content_type="application/json", headers={"x-request-id": request_id})

    async def models(self, request: web.Request) -> web.Response:
        """Each loaded version as `name@version`, and each name (its default version) as `name`."""
        entries = self._registry.entries()
        ids = sorted({e.name for e in entries}) + [e.key for e in entries]
        self._metrics.observe_request("http.models", "OK", 0.0)
        return web.json_response({"object": "list", "data": [self._model(i) for i in ids]})

    async def model(self, request: web.Request) -> web.Response:
        started, spec = time.monotonic(), request.match_info["model"]
        try:
            key = self._registry.resolve(spec).key
        except Exception as exc:
            return self._error("http.models", exc, "", started, NO_MODEL)
        self._metrics.observe_request("http.models", "OK", time.monotonic() - started, model=key)
        return web.json_response(self._model(spec))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self._gate.is_open and self._ready()
        return web.json_response({"status": "ready" if ready else "not ready"}, status=200 if ready else 503)

    def _model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self._created, "owned_by": "streamrec-embedder"}

    def _error(
        self, method: str, exc: Exception, request_id: str, started: float, model: str
    ) -> web.Response:
        if isinstance(exc, InvalidInputError):
            exc = openai.in_openai_terms(exc)
        mapped, body = error_for(exc, request_id)
        self._metrics.observe_request(method, mapped.grpc_code, time.monotonic() - started, model=model)
        headers = {"x-request-id": request_id} if request_id else {}
        return web.json_response(body, status=mapped.status, headers=headers)


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLargeError(
            f"body: larger than max_receive_message_bytes={request.app[MAX_BODY]}"
        ) from None
    except ValueError:
        raise openai.ParamError("body", "is not valid JSON") from None


def _method_label(path: str) -> str:
    """`requests_total{method}` of a route: http.embeddings, http.models (bounded: unknown paths 404)."""
    return "http.models" if path.startswith("/v1/models") else "http.embeddings"


def _auth_middleware(authorized: KeyCheck, metrics: Metrics) -> Any:
    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _OPEN_PATHS or authorized(_bearer(request.headers.get("Authorization"))):
            return await handler(request)
        exc = UnauthenticatedError("missing or invalid API key; send 'Authorization: Bearer <key>'")
        mapped, body = error_for(exc, "")
        metrics.observe_request(_method_label(request.path), mapped.grpc_code, 0.0)
        return web.json_response(body, status=mapped.status)

    return check_key


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith(_BEARER):
        return header[len(_BEARER) :].strip()
    return None


def build_app(
    api: EmbeddingsApi, config: ServerConfig, authorized: KeyCheck | None, metrics: Metrics
) -> web.Application:
    middlewares = [_auth_middleware(authorized, metrics)] if authorized is not None else []
    app = web.Application(client_max_size=config.max_receive_message_bytes, middlewares=middlewares)
    app[MAX_BODY] = config.max_receive_message_bytes
    app.router.add_post("/v1/embeddings", api.embeddings)
    app.router.add_get("/v1/models", api.models)
    app.router.add_get("/v1/models/{model}", api.model)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    return app


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The gRPC front's TLS settings for HTTPS: the same certificate, and client CA for mTLS."""
    if not config.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        if config.tls_client_ca_file:
            context.load_verify_locations(config.tls_client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"http front TLS: {exc}") from None
    return context


async def start_http_front(
    config: ServerConfig,
    registry: ModelRegistry[Any],
    metrics: Metrics,
    gate: ServingGate,
    *,
    ready: Callable[[], bool],
    authorized: KeyCheck | None,
    reuse_port: bool = False,
) -> HttpFront:
    """Bind `http_host:http_port` (port 0 = any free port) and serve; raises `ConfigError` if it cannot.
    `reuse_port`: the processes of one `serve --processes N` share the port (SO_REUSEPORT)."""
    api = EmbeddingsApi(registry, metrics, gate, ready, created=int(time.time()))
    app = build_app(api, config, authorized, metrics)
    # Requests still running at shutdown get the drain's grace period to finish.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.grace_period_s)
    await runner.setup()
    where = f"{config.http_host}:{config.http_port}"
    tls = ssl_context(config)
    site = web.TCPSite(
        runner,
        config.http_host.strip("[]"),
        config.http_port,
        ssl_context=tls,
        reuse_port=reuse_port or None,
    )
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot bind the http front to {where}: {exc}") from None
    return HttpFront(runner, int(runner.addresses[0][1]))
