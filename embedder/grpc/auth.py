"""Who may call: TLS / mTLS server credentials and API keys (`authorization: Bearer <key>`).

Both are optional and read once at start from the config (files or env, never at import time). Keys are
compared in constant time against every configured key. The health service stays open, so load
balancers and orchestrators can probe without a key; everything else (Embedder, reflection) needs one.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from embedder.config import ServerConfig
from embedder.errors import ConfigError, UnauthenticatedError
from embedder.grpc.status import status_for
from embedder.metrics import Metrics

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
_BEARER = "bearer "


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path} ({exc.strerror})") from None


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials when `tls_cert_file`/`tls_key_file` are set; with `tls_client_ca_file`, mTLS."""
    if not config.tls_cert_file:
        return None
    key = _read(config.tls_key_file, "tls_key_file")
    cert = _read(config.tls_cert_file, "tls_cert_file")
    client_ca = _read(config.tls_client_ca_file, "tls_client_ca_file") if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def load_api_keys(config: ServerConfig) -> list[str]:
    """Keys from `api_keys_file` (one per line, `#` comments) and `api_keys` (comma-separated)."""
    keys = [k.strip() for k in config.api_keys.split(",") if k.strip()]
    if config.api_keys_file:
        lines = _read(config.api_keys_file, "api_keys_file").decode("utf-8", errors="replace").splitlines()
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:  # an empty key file must not silently turn authentication off
            raise ConfigError(f"api_keys_file: {config.api_keys_file} holds no keys")
        keys += from_file
    return keys


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of the first `authorization: Bearer <token>` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str) and value.lower().startswith(_BEARER):
            return value[len(_BEARER) :].strip()
    return None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls without a valid key with UNAUTHENTICATED; health checks pass without one."""

    def __init__(self, keys: Sequence[str], metrics: Metrics | None = None) -> None:
        if not keys:
            raise ConfigError("ApiKeyInterceptor needs at least one key")
        self._keys = [k.encode("utf-8") for k in keys]
        self._metrics = metrics

    def authorized(self, token: str | None) -> bool:
        if token is None:
            return False
        given = token.encode("utf-8")
        match = False
        for key in self._keys:  # no early exit: the time taken does not depend on which key matched
            match |= hmac.compare_digest(given, key)
        return match

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata
        if self.authorized(bearer_token(metadata)):
            return handler
        return self._deny(handler, method.rsplit("/", 1)[-1])

    def _deny(self, handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        code, message = status_for(
            UnauthenticatedError("missing or invalid API key; send metadata 'authorization: Bearer <key>'"),
            "",
        )
        metrics = self._metrics

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            started = time.monotonic()
            if metrics is not None:
                metrics.observe_request(method, code.name, time.monotonic() - started)
            await context.abort(code, message)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(refuse)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)
