"""The model registry: which models and versions a server has loaded, and what a request's `model` means.

`"name@version"` pins a version; `"name"` takes that name's default version (its highest, unless the
repository names one); `""` takes the server's default model. Unknown: `ModelNotFoundError` listing what
is loaded. A pinned version that was removed while serving: `ModelRemovedError` naming the versions that
remain, so a pinned caller learns at once that its index needs rebuilding.

Rollouts (`sync`): new versions are loaded and warmed off the event loop and only then published; the
defaults switch in one step; removed versions stop resolving at once, drain the calls that already hold
a `Lease`, and only then close. The registry is generic over the served object (the gRPC front serves an
engine plus its explainer), so it knows nothing of a front end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from embedder.core.bundle import Bundle, Manifest
from embedder.core.repository import ModelSet, parse_spec, version_key
from embedder.errors import BundleError, EmbedderError, ModelNotFoundError, ModelRemovedError

log = logging.getLogger(__name__)


class Servable(Protocol):
    """What the registry needs of a served model."""

    @property
    def manifest(self) -> Manifest: ...

    def start(self) -> None: ...

    async def close(self) -> None: ...


M = TypeVar("M", bound=Servable)


@dataclass(eq=False)
class Entry(Generic[M]):
    """One loaded version and the calls that hold it."""

    model: M
    leases: int = 0
    _idle: asyncio.Event | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.model.manifest.name

    @property
    def version(self) -> str:
        return self.model.manifest.version

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def idle_event(self) -> asyncio.Event:
        if self._idle is None:  # created on first use, inside the server's event loop
            self._idle = asyncio.Event()
            if self.leases == 0:
                self._idle.set()
        return self._idle


class Lease(Generic[M]):
    """A call's hold on one version: the version drains (does not close) while leases are out."""

    def __init__(self, entry: Entry[M]) -> None:
        self.entry = entry
        self._held = True
        entry.leases += 1
        entry.idle_event().clear()

    @property
    def model(self) -> M:
        return self.entry.model

    def release(self) -> None:
        if self._held:
            self._held = False
            self.entry.leases -= 1
            if self.entry.leases == 0:
                self.entry.idle_event().set()

    def __enter__(self) -> Lease[M]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


@dataclass
class SyncReport:
    """What `sync` changed ("name@version" each) and what it could not load."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ModelRegistry(Generic[M]):
    """Use from one event loop. `load(bundle)` builds and warms a model (blocking; run off the loop)."""

    def __init__(
        self,
        load: Callable[[Bundle], M],
        default_model: str = "",
        drain_timeout_s: float = 30.0,
        on_removed: Callable[[M], None] | None = None,
    ) -> None:
        self._load = load
        self.default_model = default_model
        self.drain_timeout_s = drain_timeout_s
        self._on_removed = on_removed
        self._entries: dict[str, dict[str, Entry[M]]] = {}
        self._defaults: dict[str, str] = {}  # name -> version named by the repository
        self._removed: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    # -- resolution -----------------------------------------------------------------------------------

    def entries(self) -> list[Entry[M]]:
        """Every loaded version, by name, then version."""
        return [
            versions[v]
            for name in sorted(self._entries)
            for versions in (self._entries[name],)
            for v in sorted(versions, key=version_key)
        ]

    def default_version(self, name: str) -> str | None:
        versions = self._entries.get(name)
        if not versions:
            return None
        named = self._defaults.get(name)
        return named if named in versions else max(versions, key=version_key)

    def is_default(self, entry: Entry[M]) -> bool:
        return entry.name == self.default_model and self.is_name_default(entry)

    def is_name_default(self, entry: Entry[M]) -> bool:
        return self.default_version(entry.name) == entry.version

    def resolve(self, spec: str) -> Entry[M]:
        """The loaded version `spec` names (module docstring); typed errors otherwise."""
        name, version = parse_spec(spec) if spec else (self.default_model, None)
        versions = self._entries.get(name, {})
        if version is None:
            version = self.default_version(name)
            if version is None:
                what = f"model {name!r}" if spec else f"the default model {name!r}"
                raise ModelNotFoundError(f"{what} is not loaded; loaded: {self.describe()}")
        entry = versions.get(version)
        if entry is not None:
            return entry
        if (name, version) in self._removed:
            left = sorted(versions, key=version_key)
            raise ModelRemovedError(
                f"model {name}@{version} was removed; versions of {name!r} loaded now: {left or 'none'} "
                f"(re-pin, or send {name!r} for its default)"
            )
        raise ModelNotFoundError(f"model {name}@{version} is not loaded; loaded: {self.describe()}")

    def lease(self, spec: str) -> Lease[M]:
        """Resolve `spec` and hold that version until the lease is released (use `with`)."""
        return Lease(self.resolve(spec))

    def describe(self) -> str:
        """The loaded versions, defaults marked, e.g. "cnn@1, cnn@2 (default)"."""
        marks = {True: " (default)", False: ""}
        return ", ".join(f"{e.key}{marks[self.is_name_default(e)]}" for e in self.entries()) or "none"

    # -- rollouts -------------------------------------------------------------------------------------

    async def sync(self, models: ModelSet, strict: bool = False) -> SyncReport:
        """Serve exactly `models`: load and warm the new versions, then switch defaults, then drain and
        close the versions no longer listed. A version that fails to load is reported and skipped (with
        `strict`, at start-up, it raises); what was serving keeps serving, and a loaded version whose
        folder is unreadable right now (`models.unreadable`) stays. One sync at a time."""
        async with self._lock:
            report = SyncReport(errors=list(models.errors))
            if strict and report.errors:
                raise BundleError(report.errors[0])
            wanted = {(b.manifest.name, b.manifest.version): b for b in models.bundles}
            for (name, version), bundle in wanted.items():
                await self._add(name, version, bundle, report, strict)
            self._defaults = dict(models.defaults)
            keep = set(wanted) | models.unreadable
            gone = self._keep_last_good(
                [e for e in self.entries() if (e.name, e.version) not in keep], wanted, report
            )
            for entry in gone:
                self._unpublish(entry)
                report.removed.append(entry.key)
            await asyncio.gather(*(self._drain_and_close(e) for e in gone))
            report.loaded = [e.key for e in self.entries()]
            return report

    def _keep_last_good(
        self, gone: list[Entry[M]], wanted: dict[tuple[str, str], Bundle], report: SyncReport
    ) -> list[Entry[M]]:
        """A name whose wanted versions all failed to load keeps what it serves: a broken rollout must
        not leave callers of that name with nothing."""
        loaded = {(e.name, e.version) for e in self.entries()}
        out = []
        for entry in gone:
            wanted_here = [k for k in wanted if k[0] == entry.name]
            if wanted_here and not any(k in loaded for k in wanted_here):
                report.errors.append(f"{entry.key} kept serving: no wanted version of {entry.name!r} loaded")
                continue
            out.append(entry)
        return out

    async def _add(self, name: str, version: str, bundle: Bundle, report: SyncReport, strict: bool) -> None:
        current = self._entries.get(name, {}).get(version)
        if current is not None:
            if current.model.manifest.sha256 != bundle.manifest.sha256:
                report.errors.append(
                    f"{name}@{version}: {bundle.path} holds another model than the one serving "
                    "(a version's bytes must not change; publish a new version)"
                )
            return
        try:
            model = await asyncio.get_running_loop().run_in_executor(None, self._load, bundle)
        except EmbedderError as exc:
            if strict:
                raise
            report.errors.append(f"{name}@{version}: {exc}")
            log.error("cannot load %s@%s from %s: %s", name, version, bundle.path, exc)
            return
        if self._closed:  # the server shut down while this version warmed up: it never serves
            await model.close()
            report.errors.append(f"{name}@{version}: the server is shutting down")
            return
        model.start()
        self._entries.setdefault(name, {})[version] = Entry(model)
        self._removed.discard((name, version))
        report.added.append(f"{name}@{version}")
        log.info("loaded %s@%s from %s", name, version, bundle.path)

    def _unpublish(self, entry: Entry[M]) -> None:
        versions = self._entries[entry.name]
        del versions[entry.version]
        if not versions:
            del self._entries[entry.name]
        self._removed.add((entry.name, entry.version))

    async def _drain_and_close(self, entry: Entry[M]) -> None:
        """Wait (up to `drain_timeout_s`) for the calls that hold `entry`, then close it."""
        try:
            async with asyncio.timeout(self.drain_timeout_s):
                await entry.idle_event().wait()
        except TimeoutError:
            log.warning(
                "%s: %d calls still running after %.1fs; closing",
                entry.key,
                entry.leases,
                self.drain_timeout_s,
            )
        await entry.model.close()
        if self._on_removed is not None:
            self._on_removed(entry.model)
        log.info("removed %s", entry.key)

    async def close(self) -> None:
        """Close every version (server shutdown: the front end has drained already). A reload still
        warming a version closes it when its load returns."""
        self._closed = True
        entries = self.entries()
        self._entries.clear()
        for entry in entries:
            await entry.model.close()
