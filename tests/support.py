"""Test helpers: config for tests, a real server on a background loop, reference embeddings, sample texts."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from embedder.config import ServerConfig, load_config
from embedder.core.bundle import Bundle
from embedder.core.engine import EmbeddingEngine, EmbedOptions
from embedder.grpc.server import RunningServer, create_server
from tests.prereqs import NODE_CLIENT

T = TypeVar("T")


def make_config(**overrides: Any) -> ServerConfig:
    """Loopback, port 0 for gRPC and metrics; env ignored so a developer's shell cannot leak in."""
    # The embedding cache is off unless a test asks for it: a hit would hide what a test exercises.
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": 0,
        "metrics_host": "127.0.0.1",
        "embedding_cache_mb": 0.0,
    }
    base.update(overrides)
    return load_config(base, env={})


class ServerThread:
    """A real server (create_server) on its own event loop in a daemon thread."""

    def __init__(self, bundle: Bundle | Sequence[Bundle], config: ServerConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self._thread.start()
        self.running: RunningServer = self.call(create_server(config, bundle))
        self.config = config

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.running.metrics_port}/metrics"

    def stop(self, grace_s: float = 1.0) -> None:
        if self.loop.is_running():
            self.call(self.running.stop(grace_s))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()


_PHRASES = (
    "the quick brown fox jumps over a lazy dog",
    "stream music playlist jazz rock live new album track",
    "artist singer guitar piano remix acoustic chill summer night road trip",
)


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """Varied texts (1..60 words) so batches mix lengths and some hit max_tokens."""
    rng = random.Random(seed)
    words = [w for line in _PHRASES for w in line.split()]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) + f" #{i}" for i in range(n)]


def embed_reference(engine: EmbeddingEngine, texts: list[str], **options: Any) -> Any:
    """Each text embedded alone (batch of 1), so batching and padding on the server must not matter."""
    opts = EmbedOptions(**options)
    return np.concatenate([engine.embed_in_process([t], opts) for t in texts])


def make_repository(root: Path, *bundles: Bundle) -> Path:
    """A model repository (NAME/VERSION/ bundles) holding copies of `bundles`."""
    for b in bundles:
        add_version(root, b)
    return root


def add_version(root: Path, bundle: Bundle) -> Path:
    """Copy `bundle` into the repository at NAME/VERSION/ (as an operator publishing a version)."""
    dest = root / bundle.manifest.name / bundle.manifest.version
    shutil.copytree(bundle.path, dest)
    return dest


def run_node(script: str, *args: str, payload: Any) -> dict[str, Any]:
    """Run `clients/node/<script> ARGS` with `payload` as JSON on stdin; its stdout, parsed (bounded:
    120 s). For tests marked `requires_node`."""
    node = shutil.which("node")
    assert node is not None
    proc = subprocess.run(
        [node, str(NODE_CLIENT / script), *args],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
