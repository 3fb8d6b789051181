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

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedder.core.bundle import MANIFEST_FILE, Bundle, load_bundle
from embedder.errors import BundleError, ConfigError

DEFAULT_FILE = "default"


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
        key = (bundle.manifest.name, bundle.manifest.version)
        if key in seen:
            raise ConfigError(f"--bundle {path} and {seen[key]} are both {key[0]}@{key[1]}")
        seen[key] = bundle.path
        found.bundles.append(bundle)
    return found


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
    if (m.name, m.version) != (name, version):
        found.errors.append(
            f"{version_dir}: its manifest says {m.name}@{m.version}; the folder must be NAME/VERSION/"
        )
        return
    found.bundles.append(bundle)
