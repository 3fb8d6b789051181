"""The model bundle: the only artifact training hands to serving (format: docs/bundle.md).

A bundle is a directory with `model.onnx`, `tokenizer.json` and `manifest.json`, and optionally
`explain.onnx`, the graph behind the Explain RPC (docs/explain.md). One `Manifest`
dataclass describes it; `save_bundle()` (training, baselines) and `load_bundle()` (serving) share it,
so writer and reader cannot disagree about the format.

Every file the server reads besides the manifest is covered by a sha256 in it (format 2 added
`tokenizer_sha256`: a tokenizer with two ids swapped used to start and serve altered vectors). Format 1
bundles still load; their tokenizer is unverified and a warning says so (docs/operations.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedder.errors import BundleError, InvalidInputError

log = logging.getLogger(__name__)

# What `save_bundle` writes; `load_bundle` also reads the formats in SUPPORTED_FORMATS.
FORMAT_VERSION = 2
SUPPORTED_FORMATS = (1, 2)
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "manifest.json"
EXPLAIN_FILE = "explain.onnx"


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
    # The Explain graph (per-token contributions) and its sha256; "" = the bundle cannot explain.
    # Optional with defaults, so bundles written before Explain existed still load (format_version 1).
    explain_model: str = ""
    explain_sha256: str = ""
    # sha256 of tokenizer.json; required from format 2 on, absent in format 1.
    tokenizer_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def allowed_dimensions(self) -> list[int]:
        """The output sizes a caller may ask for, besides 0 (full): the Matryoshka prefixes and `dim`."""
        return sorted({*self.matryoshka_dims, self.dim})

    def check_dimensions(self, dimensions: int) -> None:
        """Raise `InvalidInputError` unless `dimensions` is 0 or an allowed size (Embed and Explain)."""
        if dimensions != 0 and dimensions not in self.allowed_dimensions():
            raise InvalidInputError(
                f"dimensions: {dimensions} not supported; use 0 (full) or one of {self.allowed_dimensions()}"
            )

    def hashed_files(self) -> dict[str, str]:
        """{file name in the bundle: its sha256 as the manifest records it}: every file the server reads
        (format 1 lacks the tokenizer's)."""
        files = {MODEL_FILE: self.sha256}
        if self.tokenizer_sha256:
            files[TOKENIZER_FILE] = self.tokenizer_sha256
        if self.explain_model:
            files[self.explain_model] = self.explain_sha256
        return files

    def writer_fields(self) -> dict[str, Any]:
        """The fields a writer chooses, as `save_bundle(**fields)` takes them: all but the format
        version and the hashes and file names `save_bundle` fills in itself."""
        fields = dataclasses.asdict(self)
        for key in _DERIVED_KEYS:
            fields.pop(key)
        return fields

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> Manifest:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise BundleError(f"{where}: unknown manifest keys {unknown}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in raw and _required(f))
        if missing:
            raise BundleError(f"{where}: manifest lacks required keys {missing}")
        for f in dataclasses.fields(cls):
            if f.name in raw:
                _check_type(f.name, str(f.type), raw[f.name], where)
        return cls(**raw)


_DERIVED_KEYS = ("format_version", "sha256", "tokenizer_sha256", "explain_model", "explain_sha256")
_SHA256_KEYS = ("sha256", "tokenizer_sha256", "explain_sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not 1 here


def _is_number(v: object) -> bool:
    return _is_int(v) or isinstance(v, float)


# Manifest field annotation -> (check, what the JSON value must be). A test checks every field has one.
TYPE_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "int": (_is_int, "an integer"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "list[int]": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v), "a list of integers"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "dict[str, Any]": (lambda v: isinstance(v, dict), "a JSON object"),
    "dict[str, float]": (
        lambda v: isinstance(v, dict) and all(_is_number(x) for x in v.values()),
        "a JSON object of numbers",
    ),
}


def _check_type(name: str, annotation: str, value: object, where: str) -> None:
    """One line naming the field, the type it needs and what it got (not a traceback from deep inside)."""
    check, wanted = TYPE_CHECKS[annotation]
    if not check(value):
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise BundleError(f"{where}: manifest field {name!r} must be {wanted}, got {shown}")
    if name in _SHA256_KEYS and value and not _SHA256.fullmatch(str(value)):
        raise BundleError(f"{where}: manifest field {name!r} must be 64 lowercase hex digits (a sha256)")


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

    @property
    def explain_path(self) -> Path | None:
        """The verified explain graph, or None if this bundle does not support Explain."""
        return self.path / self.manifest.explain_model if self.manifest.explain_model else None


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
    if not _is_int(version) or version not in SUPPORTED_FORMATS:
        raise BundleError(
            f"bundle {root}: format_version {version!r} is not supported "
            f"(this server reads {', '.join(map(str, SUPPORTED_FORMATS))})"
        )
    manifest = Manifest.from_dict(raw, f"bundle {root}")
    _check_fields(manifest, root)
    if verify_sha256:
        for name, expected in manifest.hashed_files().items():
            _verify_sha256(root, name, expected)
    if manifest.format_version == 1:
        log.warning(
            "bundle %s: format_version 1 does not hash %s, so it is not verified; re-save the bundle "
            "(format %d) to cover it",
            root,
            TOKENIZER_FILE,
            FORMAT_VERSION,
        )
    return Bundle(path=root, manifest=manifest)


def _verify_sha256(root: Path, name: str, expected: str) -> None:
    actual = file_sha256(root / name)
    if actual != expected:
        raise BundleError(
            f"bundle {root}: {name} sha256 {actual[:12]}… does not match manifest "
            f"{expected[:12]}… (corrupt or replaced file)"
        )


def _check_fields(m: Manifest, root: Path) -> None:
    if m.format_version >= 2 and not m.tokenizer_sha256:
        raise BundleError(f"bundle {root}: format_version {m.format_version} needs tokenizer_sha256")
    if m.format_version == 1 and m.tokenizer_sha256:
        raise BundleError(f"bundle {root}: tokenizer_sha256 needs format_version 2 (got 1)")
    if m.dim <= 0 or m.max_tokens <= 2:
        raise BundleError(
            f"bundle {root}: dim and max_tokens must be positive (dim={m.dim}, max={m.max_tokens})"
        )
    bad = [d for d in m.matryoshka_dims if not 0 < d <= m.dim]
    if bad:
        raise BundleError(f"bundle {root}: matryoshka_dims {bad} outside 1..{m.dim}")
    if m.explain_model:
        # A plain file name inside the bundle: a manifest must not point the server elsewhere.
        if Path(m.explain_model).name != m.explain_model or m.explain_model in (".", ".."):
            raise BundleError(f"bundle {root}: explain_model must be a file name, got {m.explain_model!r}")
        if not (root / m.explain_model).is_file():
            raise BundleError(f"bundle {root} is missing {m.explain_model} (named by explain_model)")
        if not m.explain_sha256:
            raise BundleError(f"bundle {root}: explain_model is set but explain_sha256 is empty")
    elif m.explain_sha256:
        raise BundleError(f"bundle {root}: explain_sha256 is set but explain_model is empty")


def save_bundle(
    out_dir: str | Path,
    model_file: str | Path,
    tokenizer_file: str | Path,
    *,
    explain_file: str | Path | None = None,
    **fields: Any,
) -> Bundle:
    """Write a bundle: copy the model, tokenizer (and explain graph), hash, write the manifest, verify it."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    _copy(model_file, root / MODEL_FILE)
    _copy(tokenizer_file, root / TOKENIZER_FILE)
    if explain_file is not None:
        _copy(explain_file, root / EXPLAIN_FILE)
        fields = {**fields, "explain_model": EXPLAIN_FILE, "explain_sha256": file_sha256(root / EXPLAIN_FILE)}
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        sha256=file_sha256(root / MODEL_FILE),
        tokenizer_sha256=file_sha256(root / TOKENIZER_FILE),
        **fields,
    )
    (root / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return load_bundle(root)


def _copy(src: str | Path, dest: Path) -> None:
    if Path(src).resolve() != dest.resolve():
        shutil.copyfile(src, dest)
