"""What the gRPC front serves per loaded model version: the engine and its explainer, built and warmed
off the event loop by `ModelLoader` (the registry's `load`), and released by `close`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from embedder.config import ServerConfig
from embedder.core.bundle import Bundle, Manifest
from embedder.core.cache import EmbeddingCache
from embedder.core.engine import EmbeddingEngine
from embedder.core.gate import ServingGate
from embedder.core.session import SessionFactory
from embedder.explain.explainer import Explainer
from embedder.metrics import Metrics


@dataclass
class ServedModel:
    engine: EmbeddingEngine
    explainer: Explainer | None

    @property
    def manifest(self) -> Manifest:
        return self.engine.manifest

    @property
    def key(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"

    def start(self) -> None:
        self.engine.start()

    async def close(self) -> None:
        await self.engine.close()
        if self.explainer is not None:
            self.explainer.close()


class ModelLoader:
    """Builds one `ServedModel` from a bundle: sessions created and warmed (the engine checks the model
    answers a batch with the manifest's `dim`) and the explain graph checked, before it takes traffic."""

    def __init__(
        self,
        config: ServerConfig,
        metrics: Metrics,
        gate: ServingGate,
        session_factory: SessionFactory | None = None,
        on_unhealthy: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._gate = gate
        self._session_factory = session_factory
        self._on_unhealthy = on_unhealthy
        # One embedding cache for every model: keyed by bundle sha256, so versions never share vectors,
        # and bounded once by `embedding_cache_mb` however many versions are loaded.
        self.cache = EmbeddingCache.of_mb(config.embedding_cache_mb)

    def __call__(self, bundle: Bundle) -> ServedModel:
        m = bundle.manifest
        engine = EmbeddingEngine(
            bundle,
            self._config,
            observer=self._metrics.for_model(f"{m.name}@{m.version}"),
            session_factory=self._session_factory,
            on_unhealthy=self._on_unhealthy,
            gate=self._gate,
            cache=self.cache,
        )
        try:
            # The Explain RPC's graph (explain.onnx), if the bundle has one; it never touches the scheduler.
            explainer = Explainer.for_bundle(bundle, self._config)
        except BaseException:
            engine.close_sync()
            raise
        self._metrics.set_model(m.name, m.version, m.dim)
        return ServedModel(engine, explainer)

    def unloaded(self, model: ServedModel) -> None:
        m = model.manifest
        self._metrics.forget_model(m.name, m.version, m.dim)
