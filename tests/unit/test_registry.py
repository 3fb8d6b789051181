"""ModelRegistry: what a `model` string means, and rollouts (warm before traffic, drain before close), on
stand-in models. Synchronised with events and loop yields, no sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from embedder.core.bundle import Bundle, Manifest
from embedder.core.registry import ModelRegistry
from embedder.core.repository import ModelSet, parse_spec, version_key
from embedder.errors import BundleError, InvalidInputError, ModelNotFoundError, ModelRemovedError


def bundle(name: str, version: str, sha: str = "") -> Bundle:
    manifest = Manifest(
        1, name, version, dim=4, max_tokens=8, pad_token_id=0, sha256=sha or f"{name}{version}"
    )
    return Bundle(Path(f"/repo/{name}/{version}"), manifest)


class FakeModel:
    def __init__(self, b: Bundle) -> None:
        self.bundle = b
        self.started = False
        self.closed = False

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True


class Loader:
    """Builds FakeModels; `fail` names versions whose load raises; `gate` holds a load (a slow warm-up)."""

    def __init__(self) -> None:
        self.fail: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, b: Bundle) -> FakeModel:
        self.entered.set()
        self.gate.wait(10)
        if b.manifest.version in self.fail:
            raise BundleError(f"model fails on a warm-up batch ({b.manifest.version})")
        return FakeModel(b)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=10))


async def settle(condition: Callable[[], bool] = lambda: False, turns: int = 500) -> bool:
    for _ in range(turns):
        if condition():
            return True
        await asyncio.sleep(0)
    return condition()


def models(*bundles: Bundle, **defaults: str) -> ModelSet:
    return ModelSet(bundles=list(bundles), defaults=defaults)


def test_spec_syntax() -> None:
    assert parse_spec("cnn") == ("cnn", None)
    assert parse_spec("cnn@1.2.0") == ("cnn", "1.2.0")
    for bad in ("@1", "cnn@", "a@b@c", "x" * 300, "bad\nname"):
        with pytest.raises(InvalidInputError, match="model"):
            parse_spec(bad)


def test_versions_order_as_people_read_them() -> None:
    assert sorted(["10", "9", "1.10.0", "1.9.2", "2-rc"], key=version_key) == [
        "1.9.2",
        "1.10.0",
        "2-rc",
        "9",
        "10",
    ]


def test_resolution_rules() -> None:
    async def body() -> None:
        registry: ModelRegistry[FakeModel] = ModelRegistry(Loader(), default_model="cnn")
        await registry.sync(models(bundle("cnn", "1"), bundle("cnn", "2"), bundle("minilm", "7")))
        assert registry.resolve("").key == "cnn@2"  # the default model at its highest version
        assert registry.resolve("cnn").key == "cnn@2"
        assert registry.resolve("cnn@1").key == "cnn@1"
        assert registry.resolve("minilm").key == "minilm@7"
        await registry.sync(models(bundle("cnn", "1"), bundle("cnn", "2"), bundle("minilm", "7"), cnn="1"))
        assert registry.resolve("").key == "cnn@1"  # the repository names the default version
        with pytest.raises(
            ModelNotFoundError, match=r"cnn@3 is not loaded; loaded: cnn@1 \(default\), cnn@2"
        ):
            registry.resolve("cnn@3")
        with pytest.raises(ModelNotFoundError, match="'bert' is not loaded"):
            registry.resolve("bert")
        assert all(e.model.started for e in registry.entries())
        await registry.close()

    run(body)


def test_a_new_version_takes_traffic_only_once_loaded_and_warm() -> None:
    async def body() -> None:
        loader = Loader()
        registry: ModelRegistry[FakeModel] = ModelRegistry(loader, default_model="cnn")
        await registry.sync(models(bundle("cnn", "1")))
        loader.gate.clear()
        loader.entered.clear()
        rollout = asyncio.create_task(registry.sync(models(bundle("cnn", "1"), bundle("cnn", "2"))))
        await asyncio.get_running_loop().run_in_executor(None, loader.entered.wait, 10)
        assert registry.resolve("").key == "cnn@1"  # v2 is still warming up: nobody gets it
        with pytest.raises(ModelNotFoundError):
            registry.resolve("cnn@2")
        loader.gate.set()
        report = await rollout
        assert report.added == ["cnn@2"] and report.removed == []
        assert registry.resolve("").key == "cnn@2"
        await registry.close()

    run(body)


def test_a_removed_version_drains_its_calls_before_it_closes() -> None:
    async def body() -> None:
        registry: ModelRegistry[FakeModel] = ModelRegistry(Loader(), default_model="cnn")
        await registry.sync(models(bundle("cnn", "1"), bundle("cnn", "2")))
        lease = registry.lease("cnn@1")  # a call running on v1
        old = lease.model
        rollout = asyncio.create_task(registry.sync(models(bundle("cnn", "2"))))
        assert await settle(lambda: "cnn@1" not in registry.describe())
        with pytest.raises(
            ModelRemovedError, match=r"cnn@1 was removed; versions of 'cnn' loaded now: \['2'\]"
        ):
            registry.resolve("cnn@1")  # pinned callers learn at once
        assert registry.resolve("cnn").key == "cnn@2"  # unpinned ones move on
        assert not await settle(rollout.done)  # the running call holds v1 open ...
        assert not old.closed
        lease.release()  # ... until it ends
        report = await rollout
        assert old.closed and report.removed == ["cnn@1"] and report.loaded == ["cnn@2"]
        await registry.close()

    run(body)


def test_a_version_that_fails_to_load_is_reported_and_the_old_one_keeps_serving() -> None:
    async def body() -> None:
        loader = Loader()
        registry: ModelRegistry[FakeModel] = ModelRegistry(loader, default_model="cnn")
        await registry.sync(models(bundle("cnn", "1")))
        loader.fail = {"2"}
        report = await registry.sync(models(bundle("cnn", "2")))
        # v1 is no longer listed, but nothing of "cnn" took its place: it keeps serving.
        assert report.errors == [
            "cnn@2: model fails on a warm-up batch (2)",
            "cnn@1 kept serving: no wanted version of 'cnn' loaded",
        ]
        assert report.loaded == ["cnn@1"] and registry.resolve("cnn").key == "cnn@1"
        report = await registry.sync(models(bundle("cnn", "1"), bundle("cnn", "2")))
        assert report.errors and registry.resolve("").key == "cnn@1"
        with pytest.raises(BundleError):
            await registry.sync(models(bundle("cnn", "1"), bundle("cnn", "2")), strict=True)
        await registry.close()

    run(body)


def test_an_unreadable_folder_does_not_unload_a_serving_version() -> None:
    async def body() -> None:
        registry: ModelRegistry[FakeModel] = ModelRegistry(Loader(), default_model="cnn")
        await registry.sync(models(bundle("cnn", "1")))
        half_copied = ModelSet(errors=["cnn@1: sha256 mismatch"], unreadable={("cnn", "1")})
        report = await registry.sync(half_copied)
        assert report.removed == [] and report.loaded == ["cnn@1"] and report.errors
        await registry.close()

    run(body)


def test_a_version_s_bytes_must_not_change_under_it() -> None:
    async def body() -> None:
        registry: ModelRegistry[FakeModel] = ModelRegistry(Loader(), default_model="cnn")
        await registry.sync(models(bundle("cnn", "1", sha="aaa")))
        report = await registry.sync(models(bundle("cnn", "1", sha="bbb")))
        assert "another model than the one serving" in report.errors[0]
        assert registry.resolve("cnn@1").model.manifest.sha256 == "aaa"
        await registry.close()

    run(body)


def test_a_version_still_warming_at_shutdown_never_serves() -> None:
    async def body() -> None:
        loader = Loader()
        registry: ModelRegistry[FakeModel] = ModelRegistry(loader, default_model="cnn")
        await registry.sync(models(bundle("cnn", "1")))
        loader.gate.clear()
        loader.entered.clear()
        rollout = asyncio.create_task(registry.sync(models(bundle("cnn", "1"), bundle("cnn", "2"))))
        await asyncio.get_running_loop().run_in_executor(None, loader.entered.wait, 10)
        await registry.close()  # SIGTERM while a SIGHUP reload warms v2
        loader.gate.set()
        report = await rollout
        assert report.added == [] and "shutting down" in report.errors[0]
        assert registry.entries() == []

    run(body)
