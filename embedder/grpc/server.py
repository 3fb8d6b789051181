"""The gRPC aio server: Embedder + health + reflection + /metrics, and graceful shutdown.

`create_server(config, bundle)` binds (port 0 picks a free port), starts serving and returns a
`RunningServer` carrying the bound ports, so tests never guess ports. `serve(config)` adds SIGTERM/SIGINT
handling: health goes NOT_SERVING, new calls get UNAVAILABLE, accepted calls get `grace_period_s` to
finish, then the process exits 0. Optional TLS/mTLS and API keys come from `auth.py`; the drain state is
the core's `ServingGate`, which the engine and the servicer both obey.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedder.config import ServerConfig
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine
from embedder.core.gate import ServingGate
from embedder.core.registry import ModelRegistry, SyncReport
from embedder.core.repository import ModelSet, from_bundles, scan_repository
from embedder.core.session import SessionFactory
from embedder.errors import ConfigError, EmbedderError
from embedder.explain.explainer import Explainer
from embedder.grpc.auth import ApiKeyInterceptor, load_api_keys, server_credentials
from embedder.grpc.drain import InflightTracker
from embedder.grpc.limits import CallLimits
from embedder.grpc.served import ModelLoader, ServedModel
from embedder.grpc.service import SERVICE_NAME, EmbedderService, add_to_server
from embedder.http.app import HttpFront, start_http_front
from embedder.metrics import Metrics

__all__ = ["SERVICE_NAME", "RunningServer", "create_server", "serve"]

log = logging.getLogger(__name__)

# After the last accepted call is answered, how long the drain still refuses new calls before closing.
_SETTLE_S = 0.5
# The least time gRPC's graceful stop gives calls still open when it starts (they were refused by the
# draining service a moment ago and are on their way out), even once `grace_period_s` is spent.
_STOP_GRACE_S = 1.0


@dataclass
class RunningServer:
    """A started server and the parts `stop()` needs to drain it in order."""

    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    registry: ModelRegistry[ServedModel]
    service: EmbedderService
    health: Any  # grpc_health.v1.health.aio.HealthServicer (the stubs lack the aio module)
    metrics: Metrics
    inflight: InflightTracker
    gate: ServingGate
    limits: CallLimits
    sources: Callable[[], ModelSet]
    http: HttpFront | None = None
    _stopped: bool = False

    @property
    def engine(self) -> EmbeddingEngine:
        """The default model's engine."""
        return self.registry.resolve("").model.engine

    @property
    def explainer(self) -> Explainer | None:
        return self.registry.resolve("").model.explainer

    async def reload(self) -> SyncReport:
        """Re-read the model sources (repository or bundles) and roll the registry to them."""
        return await reload_models(self.registry, self.sources)

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING -> refuse new calls -> let accepted calls finish (up to `grace_s`) -> release."""
        if self._stopped:
            return
        self._stopped = True
        log.info("draining: health NOT_SERVING, new calls UNAVAILABLE, grace %.1fs", grace_s)
        await self.health.enter_graceful_shutdown()
        self.gate.close()
        # gRPC keeps running while accepted calls finish, so calls that race with the signal get a
        # precise UNAVAILABLE from the service; stopping gRPC at once would cut some off (CANCELLED).
        started, calls_before = time.monotonic(), self.inflight.started
        # Traffic is "recent" when a call ran within the settle window: calls answered from the cache
        # take well under a millisecond, so under load none may be running at the instant of the signal.
        busy = self.inflight.seen_within(_SETTLE_S)
        if await self.inflight.wait_idle(grace_s):
            # Settle (if there was traffic): the last responses leave, and callers who just got them
            # and call again are refused precisely too. Their refusals are held from now until gRPC's
            # stop has begun (EmbedderService.hold_refusals), so no caller has a call on its way then.
            if busy or self.inflight.started > calls_before:
                self.service.hold_refusals()
                await asyncio.sleep(max(0.0, min(_SETTLE_S, grace_s - (time.monotonic() - started))))
        else:
            log.warning("grace period over; cancelling %d unfinished calls", self.inflight.active)
        # Health Watch streams never end by themselves: end them (NOT_SERVING, then UNAVAILABLE).
        self.limits.end_watch_streams()
        # Graceful: GOAWAY first, so a call racing the stop is refused by the transport (UNAVAILABLE,
        # which clients retry), and open calls finish. stop(0) cancelled them: CANCELLED, which clients
        # must not retry, 1-6 times per restart under load (issue 14).
        stopping = asyncio.create_task(
            self.server.stop(max(_STOP_GRACE_S, grace_s - (time.monotonic() - started)))
        )
        await _stop_begun(self.server)
        self.service.release_refusals()
        await stopping
        if self.http is not None:  # closed by the gate since the drain began: it only finishes requests
            await self.http.stop()
        await self.registry.close()
        self.metrics.stop_http()
        counts = ", ".join(f"{m} {c}={n}" for (m, c), n in sorted(self.metrics.request_counts().items()))
        log.info("stopped; requests served: %s", counts or "none")


async def _stop_begun(server: grpc.aio.Server) -> None:
    """Until `server.stop()` has told gRPC's core to shut down (GOAWAY sent, no new calls taken): its
    first step, done before its first real wait. Bounded: a few turns of the event loop at most."""
    core = getattr(server, "_server", None)  # grpc.aio's AioServer; is_running() is False once stopping
    for _ in range(100):
        await asyncio.sleep(0)
        if core is None or not core.is_running():
            return


def _grpc_options(config: ServerConfig, reuse_port: bool = False) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        ("grpc.max_send_message_length", -1),
        # Two servers must never share a port by accident (tests bind port 0 many times); the processes
        # of one `serve --processes N` share theirs on purpose (grpc/processes.py reserves it first).
        ("grpc.so_reuseport", int(reuse_port)),
    ]


def _not_serving_callback(health_servicer: Any, healthy: list[bool]) -> Callable[[], None]:
    """Thread-safe: flips health to NOT_SERVING (inference can no longer be trusted; restart me), and
    `healthy[0]` to False for the HTTP front's readiness."""
    loop = asyncio.get_running_loop()

    async def flip() -> None:
        healthy[0] = False
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def callback() -> None:
        asyncio.run_coroutine_threadsafe(flip(), loop)

    return callback


def _metrics_endpoint(metrics: Metrics, config: ServerConfig) -> int | None:
    """Serve /metrics on `metrics_port` (-1 = none); a port in use is a one-line start-up error."""
    if config.metrics_port < 0:
        return None
    try:
        return metrics.start_http(config.metrics_host, config.metrics_port)
    except OSError as exc:
        raise metrics_bind_error(config, exc) from None


def metrics_bind_error(config: ServerConfig, exc: OSError) -> ConfigError:
    """The one-line start-up error for a metrics port that cannot be bound (one process or several)."""
    where = f"{config.metrics_host}:{config.metrics_port}"
    return ConfigError(
        f"cannot bind the metrics endpoint to {where}: {exc.strerror or exc} "
        "(set metrics_port to a free port, 0 for any, or -1 for none)"
    )


async def _http_front(
    config: ServerConfig,
    registry: ModelRegistry[ServedModel],
    metrics: Metrics,
    gate: ServingGate,
    healthy: list[bool],
    *,
    reuse_port: bool,
) -> HttpFront | None:
    """The OpenAI-compatible front on `http_port` (-1 = none), with the same API keys as gRPC."""
    if config.http_port < 0:
        return None
    keys = load_api_keys(config)
    authorized = ApiKeyInterceptor(keys).authorized if keys else None
    return await start_http_front(
        config,
        registry,
        metrics,
        gate,
        ready=lambda: healthy[0],
        authorized=authorized,
        reuse_port=reuse_port,
    )


def _grpc_server(
    config: ServerConfig,
    metrics: Metrics,
    inflight: InflightTracker,
    limits: CallLimits,
    reuse_port: bool,
) -> grpc.aio.Server:
    keys = load_api_keys(config)
    # The lane limits come first: a call beyond its lane's bound is refused before anything else runs.
    interceptors: list[grpc.aio.ServerInterceptor] = [limits, inflight]  # type: ignore[type-arg]
    if keys:
        interceptors.append(ApiKeyInterceptor(keys, metrics))
    # No gRPC-wide cap (maximum_concurrent_rpcs): it counted health Watch streams and Check with the
    # keyed calls, so anonymous streams could starve both (limits.py bounds each lane instead).
    return grpc.aio.server(options=_grpc_options(config, reuse_port), interceptors=interceptors)


def _bind(server: grpc.aio.Server, config: ServerConfig, credentials: grpc.ServerCredentials | None) -> int:
    address = f"{config.host}:{config.port}"
    try:
        if credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"cannot bind {address}: {exc}") from None


async def reload_models(registry: ModelRegistry[ServedModel], sources: Callable[[], ModelSet]) -> SyncReport:
    """SIGHUP and the ReloadModels RPC: new versions load and warm first, removed ones drain, then close."""
    try:
        models = await asyncio.get_running_loop().run_in_executor(None, sources)  # hashes every bundle
    except EmbedderError as exc:
        return SyncReport(errors=[str(exc)], loaded=[e.key for e in registry.entries()])
    report = await registry.sync(models)
    log.info(
        "reload: added %s, removed %s, loaded %s, errors %s",
        report.added or "none",
        report.removed or "none",
        report.loaded,
        report.errors or "none",
    )
    return report


def model_sources(config: ServerConfig, bundles: Sequence[Bundle] = ()) -> Callable[[], ModelSet]:
    """Where the served models come from, read again on every reload: the repository, else the given
    bundles, else `config.bundle`."""
    if config.model_repository:
        return lambda: scan_repository(config.model_repository)
    if bundles:
        fixed = list(bundles)
        return lambda: ModelSet(bundles=fixed)
    paths = config.bundle_paths()
    return lambda: from_bundles(paths)


async def _load_models(
    config: ServerConfig, models: ModelSet, loader: ModelLoader, metrics: Metrics
) -> ModelRegistry[ServedModel]:
    """Every model loaded and warmed (a bad one fails start-up), behind a registry."""
    default = config.default_model or (models.bundles[0].manifest.name if models.bundles else "")
    registry = ModelRegistry(loader, default, config.grace_period_s, on_removed=loader.unloaded)
    cache = loader.cache
    metrics.watch_cache(cache.stats if cache is not None else lambda: None)
    try:
        await registry.sync(models, strict=True)
    except BaseException:
        await registry.close()
        raise
    if not registry.entries():
        raise ConfigError("no model to serve: the model repository holds no bundle")
    return registry


async def create_server(
    config: ServerConfig,
    bundle: Bundle | Sequence[Bundle] | None = None,
    session_factory: SessionFactory | None = None,
    *,
    reuse_port: bool = False,
    after_reload: Callable[[], None] | None = None,
) -> RunningServer:
    """Load the models, bind, start; health goes SERVING once every model has answered a warm-up batch.

    `bundle` (one or several) replaces `config.bundle`; `session_factory` replaces the ONNX sessions (the
    tests' fault-injection seam). `reuse_port` and `after_reload` serve one process of several
    (grpc/processes.py): the ports are shared, and a ReloadModels call taken here is passed on.
    """
    sources = model_sources(config, [bundle] if isinstance(bundle, Bundle) else list(bundle or ()))
    models = sources()  # a bad bundle fails start-up here, before anything binds
    metrics = Metrics()
    # Keys and TLS files are read before the models load: a bad one fails start-up at once.
    inflight = InflightTracker((f"/{SERVICE_NAME}/",))
    limits = CallLimits(config.max_concurrent_rpcs, config.max_health_watch_streams, metrics)
    server = _grpc_server(config, metrics, inflight, limits, reuse_port)
    credentials = server_credentials(config)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    gate = ServingGate()
    healthy = [True]
    loader = ModelLoader(
        config, metrics, gate, session_factory, _not_serving_callback(health_servicer, healthy)
    )
    registry = await _load_models(config, models, loader, metrics)

    async def reload_rpc() -> SyncReport:
        report = await reload_models(registry, sources)
        if after_reload is not None:
            after_reload()
        return report

    service = EmbedderService(registry, metrics, config, gate, reload=reload_rpc)
    add_to_server(service, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    http: HttpFront | None = None
    try:
        port = _bind(server, config, credentials)
        http = await _http_front(config, registry, metrics, gate, healthy, reuse_port=reuse_port)
        metrics_port = _metrics_endpoint(metrics, config)
    except ConfigError:  # a port taken: one line, and nothing left running (or for gRPC's finalizer)
        if http is not None:
            await http.stop()
        await server.stop(None)
        await registry.close()
        raise
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(
        server,
        port,
        metrics_port,
        registry,
        service,
        health_servicer,
        metrics,
        inflight,
        gate,
        limits,
        sources,
        http,
    )


async def serve(
    config: ServerConfig,
    bundle: Bundle | None = None,
    *,
    reuse_port: bool = False,
    on_ready: Callable[[RunningServer, float], None] | None = None,
    after_reload: Callable[[], None] | None = None,
) -> None:
    """Run until SIGTERM/SIGINT, then drain gracefully. `on_ready(server, start_s)` replaces the
    "serving ... on port" line (one process of several reports to its supervisor instead)."""
    started = time.monotonic()
    running = await create_server(config, bundle, reuse_port=reuse_port, after_reload=after_reload)
    # What start-up loaded lives as long as the process: keep it out of the collector's full passes,
    # which otherwise stall the event loop (~45 ms measured under load; docs/operations.md).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[SyncReport]] = set()

    def reload() -> None:  # SIGHUP: roll to what the repository holds now, without a restart
        task = loop.create_task(running.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        # Ready only once the signals are ours: a supervisor may send one the moment it hears.
        if on_ready is not None:
            on_ready(running, time.monotonic() - started)
        else:  # One token before "on port": scripts and tests read the ports from this line.
            log.info(
                "serving %s on port %d (metrics port %s, http port %s, %d workers per model) after %.2fs; "
                "loaded: %s",
                running.registry.resolve("").key,
                running.port,
                running.metrics_port,
                running.http_port,
                running.engine.workers,
                time.monotonic() - started,
                running.registry.describe(),
            )
        await stop.wait()
    finally:
        # A second SIGTERM/SIGINT during the drain (a supervisor's and a terminal's, or a process
        # group's) changes nothing: the handlers stay until the drain is over.
        loop.remove_signal_handler(signal.SIGHUP)
        try:
            await running.stop(config.grace_period_s)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
