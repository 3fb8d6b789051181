"""Where the models to serve come from: `--bundle DIR` (repeatable) or a model repository.

A model repository is a folder of `NAME/VERSION/` bundles (docs/bundle.md), like Triton's:

    models/
      streamrec-cnn/
        1.0.0/   manifest.json model.onnx tokenizer.json [explain.onnx]
        1.1.0/   ...
        default  (optional) one line: the version "streamrec-cnn" means; else the highest version

Each bundle's manifest must carry the folder's name and version. The server reads the repository at
start and again on SIGHUP or the ReloadModels RPC (`ModelRegistry.sync`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedder.config import ServerConfig
from embedder.core.bundle import MANIFEST_FILE, Bundle, load_bundle
from embedder.errors import BundleError, ConfigError, InvalidInputError, ModelNotFoundError

DEFAULT_FILE = "default"
MAX_MODEL_SPEC_CHARS = 256


@functools.lru_cache(maxsize=1024)  # called on every request (the default version); versions are few
def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions as people do: "10" after "9", "1.10.0" after "1.9.2"; numbers before words."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+_]", version))


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`"name"` -> (name, None); `"name@version"` -> (name, version); `InvalidInputError` otherwise."""
    if len(spec) > MAX_MODEL_SPEC_CHARS or not spec.isprintable():
        raise InvalidInputError(f"model: must be at most {MAX_MODEL_SPEC_CHARS} printable characters")
    name, at, version = spec.partition("@")
    if not name or (at and not version) or "@" in version:
        raise InvalidInputError(f'model: {spec!r} is not "name" or "name@version"')
    return name, (version if at else None)


@dataclass
class ModelSet:
    """The bundles to serve, the default version per name (when named), and what could not be read."""

    bundles: list[Bundle] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # (name, version) folders present but unreadable now: a version already serving stays.
    unreadable: set[tuple[str, str]] = field(default_factory=set)

    def names(self) -> list[str]:
        return sorted({b.manifest.name for b in self.bundles})


def from_bundles(paths: Sequence[str | Path]) -> ModelSet:
    """The `--bundle` list; two bundles with one name@version are a configuration error."""
    found = ModelSet()
    seen: dict[tuple[str, str], Path] = {}
    for path in paths:
        bundle = load_bundle(path)
        _check_identity(bundle)
        key = (bundle.manifest.name, bundle.manifest.version)
        if key in seen:
            raise ConfigError(f"--bundle {path} and {seen[key]} are both {key[0]}@{key[1]}")
        seen[key] = bundle.path
        found.bundles.append(bundle)
    return found


def _check_identity(bundle: Bundle) -> None:
    """A served model's name and version must be writable as EmbedRequest.model ("name@version")."""
    m = bundle.manifest
    for what, value in (("name", m.name), ("version", m.version)):
        if not value or "@" in value or not value.isprintable() or "," in value:
            raise BundleError(f"bundle {bundle.path}: manifest {what} {value!r} cannot be named in a request")


def scan_repository(root: str | Path) -> ModelSet:
    """Every `NAME/VERSION/` bundle under `root`; a broken one is listed in `errors`, not raised."""
    base = Path(root)
    if not base.is_dir():
        raise ConfigError(f"model_repository: {base} is not a directory")
    found = ModelSet()
    for model_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for version_dir in sorted(p for p in model_dir.iterdir() if (p / MANIFEST_FILE).is_file()):
            _add_version(found, model_dir.name, version_dir)
        default_file = model_dir / DEFAULT_FILE
        if default_file.is_file():
            found.defaults[model_dir.name] = default_file.read_text(encoding="utf-8").strip()
    return found


def _add_version(found: ModelSet, name: str, version_dir: Path) -> None:
    version = version_dir.name
    try:
        bundle = load_bundle(version_dir)
    except BundleError as exc:
        found.errors.append(f"{name}@{version}: {exc}")
        found.unreadable.add((name, version))
        return
    m = bundle.manifest
    try:
        _check_identity(bundle)
    except BundleError as exc:
        found.errors.append(f"{name}@{version}: {exc}")
        return
    if (m.name, m.version) != (name, version):
        found.errors.append(
            f"{version_dir}: its manifest says {m.name}@{m.version}; the folder must be NAME/VERSION/"
        )
        return
    found.bundles.append(bundle)


def configured_models(config: ServerConfig) -> ModelSet:
    """The models `config` names: its repository if set, else its bundles."""
    if config.model_repository:
        return scan_repository(config.model_repository)
    return from_bundles(config.bundle_paths())


def choose_bundle(config: ServerConfig, spec: str = "") -> Bundle:
    """The one bundle an in-process command (embed, info, explain, embed-file) runs, chosen by `spec` as
    a server chooses for EmbedRequest.model ("" = `default_model`, else the first name)."""
    models = configured_models(config)
    if not models.bundles:
        raise BundleError(models.errors[0] if models.errors else "no model bundle configured")
    name, version = (
        parse_spec(spec) if spec else (config.default_model or models.bundles[0].manifest.name, None)
    )
    versions = {b.manifest.version: b for b in models.bundles if b.manifest.name == name}
    if version is None and versions:
        named = models.defaults.get(name)
        version = named if named in versions else max(versions, key=version_key)
    if version not in versions:
        loaded = ", ".join(f"{b.manifest.name}@{b.manifest.version}" for b in models.bundles)
        raise ModelNotFoundError(f"model {spec or name!r} is not among the configured bundles: {loaded}")
    return versions[version]
