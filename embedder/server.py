"""The gRPC aio server: Embedder + health + reflection + /metrics, and graceful shutdown.

`create_server(config, bundle)` binds (port 0 picks a free port), starts serving and returns a
`RunningServer` carrying the bound ports, so tests never guess ports. `serve(config)` adds SIGTERM/SIGINT
handling: health goes NOT_SERVING, new calls get UNAVAILABLE, accepted calls get `grace_period_s` to
finish, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedder.bundle import Bundle, load_bundle
from embedder.config import ServerConfig
from embedder.engine import EmbeddingEngine
from embedder.errors import ConfigError
from embedder.metrics import Metrics
from embedder.service import EmbedderService
from embedder.v1 import embedder_pb2 as pb
from embedder.v1 import embedder_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Embedder"].full_name


@dataclass
class RunningServer:
    """A started server and the parts `stop()` needs to drain it in order."""

    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    engine: EmbeddingEngine
    service: EmbedderService
    health: Any  # grpc_health.v1.health.aio.HealthServicer (the stubs lack the aio module)
    metrics: Metrics
    _stopped: bool = False

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING -> refuse new calls -> let accepted calls finish (up to `grace_s`) -> release."""
        if self._stopped:
            return
        self._stopped = True
        log.info("draining: health NOT_SERVING, new calls UNAVAILABLE, grace %.1fs", grace_s)
        await self.health.enter_graceful_shutdown()
        self.service.start_draining()
        await self.server.stop(grace_s)
        await self.engine.close()
        self.metrics.stop_http()
        log.info("stopped")


def _grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        ("grpc.max_send_message_length", -1),
        # Two servers must never share a port by accident (tests bind port 0 many times).
        ("grpc.so_reuseport", 0),
    ]


async def create_server(config: ServerConfig, bundle: Bundle | None = None) -> RunningServer:
    """Load the model, bind, start; health goes SERVING once the model has answered a warm-up batch."""
    bundle = bundle or load_bundle(config.bundle)
    metrics = Metrics()
    m = bundle.manifest
    metrics.set_model(m.name, m.version, m.dim)
    engine = EmbeddingEngine(bundle, config, observer=metrics)
    engine.start()
    server = grpc.aio.server(options=_grpc_options(config))
    service = EmbedderService(engine, metrics)
    pb_grpc.add_EmbedderServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(f"{config.host}:{config.port}")
    except RuntimeError as exc:
        await engine.close()
        raise ConfigError(f"cannot bind {config.host}:{config.port}: {exc}") from None
    await server.start()
    metrics_port = (
        metrics.start_http(config.metrics_host, config.metrics_port) if config.metrics_port >= 0 else None
    )
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, metrics_port, engine, service, health_servicer, metrics)


async def serve(config: ServerConfig, bundle: Bundle | None = None) -> None:
    """Run until SIGTERM/SIGINT, then drain gracefully."""
    started = time.monotonic()
    running = await create_server(config, bundle)
    log.info(
        "serving %s on port %d (metrics port %s, %d workers) after %.2fs",
        running.engine.manifest.name,
        running.port,
        running.metrics_port,
        running.engine.workers,
        time.monotonic() - started,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await running.stop(config.grace_period_s)
