"""The model bundle: the only artifact training hands to serving (contract: ../shared/DESIGN.md).

A bundle is a directory with `model.onnx`, `tokenizer.json` and `manifest.json`. One `Manifest`
dataclass describes it; `save_bundle()` (training, baselines) and `load_bundle()` (serving) share it,
so writer and reader cannot disagree about the format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedder.errors import BundleError

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """What `manifest.json` holds. Unknown keys are refused, so a newer writer is caught early."""

    format_version: int
    name: str
    version: str
    dim: int
    max_tokens: int
    pad_token_id: int
    sha256: str
    parameters: int = 0
    architecture: str = ""
    matryoshka_dims: list[int] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # Optional ONNX outputs beyond `embeddings` (e.g. "token_features" for Explain).
    extra_outputs: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> Manifest:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise BundleError(f"{where}: unknown manifest keys {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in raw and _required(f))
        if missing:
            raise BundleError(f"{where}: manifest lacks required keys {missing}")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise BundleError(f"{where}: bad manifest: {exc}") from None


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(path: str | Path, verify_sha256: bool = True) -> Bundle:
    """Read and verify a bundle; raise `BundleError` with a one-line reason if anything is off."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle directory not found: {root}")
    for name in (MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE):
        if not (root / name).is_file():
            raise BundleError(f"bundle {root} is missing {name}")
    try:
        raw = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle {root}: {MANIFEST_FILE} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise BundleError(f"bundle {root}: {MANIFEST_FILE} must hold a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"bundle {root}: format_version {version!r} is not supported (this server reads {FORMAT_VERSION})"
        )
    manifest = Manifest.from_dict(raw, f"bundle {root}")
    _check_fields(manifest, root)
    if verify_sha256:
        actual = file_sha256(root / MODEL_FILE)
        if actual != manifest.sha256:
            raise BundleError(
                f"bundle {root}: {MODEL_FILE} sha256 {actual[:12]}… does not match manifest "
                f"{manifest.sha256[:12]}… (corrupt or replaced file)"
            )
    return Bundle(path=root, manifest=manifest)


def _check_fields(m: Manifest, root: Path) -> None:
    if m.dim <= 0 or m.max_tokens <= 2:
        raise BundleError(
            f"bundle {root}: dim and max_tokens must be positive (dim={m.dim}, max={m.max_tokens})"
        )
    bad = [d for d in m.matryoshka_dims if not 0 < d <= m.dim]
    if bad:
        raise BundleError(f"bundle {root}: matryoshka_dims {bad} outside 1..{m.dim}")


def save_bundle(
    out_dir: str | Path,
    model_file: str | Path,
    tokenizer_file: str | Path,
    **fields: Any,
) -> Bundle:
    """Write a bundle: copy the model and tokenizer, hash the model, write the manifest, verify it."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    if Path(model_file).resolve() != (root / MODEL_FILE).resolve():
        shutil.copyfile(model_file, root / MODEL_FILE)
    if Path(tokenizer_file).resolve() != (root / TOKENIZER_FILE).resolve():
        shutil.copyfile(tokenizer_file, root / TOKENIZER_FILE)
    manifest = Manifest(format_version=FORMAT_VERSION, sha256=file_sha256(root / MODEL_FILE), **fields)
    (root / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return load_bundle(root)
