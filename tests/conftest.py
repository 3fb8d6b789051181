"""Shared fixtures: a real bundle exported from training/'s CNN, and real servers on port 0.

Tests that need more than the Python install carry a `requires_*` marker (tests/prereqs.py).

Servers run their asyncio loop in a background thread (tests/support.py), so tests drive them with the
real blocking client, exactly as the ranking pipeline would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from embedder.core.bundle import Bundle, load_bundle, save_bundle
from embedder.core.engine import EmbeddingEngine
from tests.prereqs import PREREQUISITES, in_ci, missing
from tests.support import ServerThread, make_config

# The tiny test architecture has no Matryoshka dims; the serving tests need some to exercise `dimensions`.
TEST_MATRYOSHKA_DIMS = [64, 128]


def pytest_configure(config: pytest.Config) -> None:
    for marker, need in PREREQUISITES.items():
        config.addinivalue_line("markers", f"{marker}: needs {need.what}; skips without it, fails if CI=true")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or under CI=true fail) a test whose prerequisite is missing, before its fixtures start."""
    reasons = [missing(m) for m in PREREQUISITES if item.get_closest_marker(m) and missing(m)]
    if reasons and in_ci():
        pytest.fail(f"CI=true and a prerequisite is missing: {'; '.join(reasons)}", pytrace=False)
    if reasons:
        pytest.skip("; ".join(reasons))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The real CNN (tiny config, random weights) exported to ONNX, as a verified bundle."""
    from training.export import export_random_bundle

    raw = load_bundle(export_random_bundle(tmp_path_factory.mktemp("bundle-raw")))
    fields = raw.manifest.writer_fields()
    fields["matryoshka_dims"] = TEST_MATRYOSHKA_DIMS
    return save_bundle(
        tmp_path_factory.mktemp("bundle"),
        raw.model_path,
        raw.tokenizer_path,
        explain_file=raw.explain_path,
        **fields,
    )


@pytest.fixture(scope="session")
def bundle_v2(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """A second version of `bundle`'s model (same name, version 1.0.0, other random weights): its vectors
    live in another space, so a vector labelled with the wrong version is caught."""
    from training.export import export_random_bundle

    raw = load_bundle(export_random_bundle(tmp_path_factory.mktemp("bundle-v2-raw"), seed=1))
    fields = raw.manifest.writer_fields()
    fields |= {"matryoshka_dims": TEST_MATRYOSHKA_DIMS, "name": bundle.manifest.name, "version": "1.0.0"}
    return save_bundle(
        tmp_path_factory.mktemp("bundle-v2"),
        raw.model_path,
        raw.tokenizer_path,
        explain_file=raw.explain_path,
        **fields,
    )


@pytest.fixture(scope="session")
def reference_v2(bundle_v2: Bundle) -> Iterator[EmbeddingEngine]:
    """In-process embedding with `bundle_v2`."""
    engine = EmbeddingEngine(bundle_v2, make_config(workers=1, tokenizer_threads=1))
    yield engine
    engine.close_sync()


@pytest.fixture
def start_server(bundle: Bundle) -> Iterator[Callable[..., ServerThread]]:
    """Factory: `start_server(max_wait_ms=5)` -> a fresh ServerThread, stopped after the test.

    `served=` serves another bundle than the test one.
    """
    started: list[ServerThread] = []

    def start(served: Bundle | Sequence[Bundle] | None = None, **overrides: Any) -> ServerThread:
        server = ServerThread(served or bundle, make_config(**overrides))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(bundle: Bundle) -> Iterator[ServerThread]:
    """One shared server for tests that only read (no metrics or shutdown assertions)."""
    handle = ServerThread(bundle, make_config())
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def reference(bundle: Bundle) -> Iterator[EmbeddingEngine]:
    """In-process embedding (tokenizer + ONNX, no batcher, no server): the expected values."""
    engine = EmbeddingEngine(bundle, make_config(workers=1, tokenizer_threads=1))
    yield engine
    engine.close_sync()
