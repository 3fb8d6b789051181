"""Which bundles a benchmark run compares, and where each comes from.

Model keys: `cnn` (the StreamRec CNN: `--bundle`, else the committed default bundle, else a random-weight
bundle of the same architecture, labelled as such), the baselines `minilm-fp32`, `minilm-int8`,
`model2vec` (built into benchmarks/.cache/bundles on first use), or any bundle directory.

In `--quick` mode a baseline that is not cached is built only if that fits the 2-minute budget: MiniLM
(ONNX export, ~15 s) yes; model2vec (distillation, ~3 min) no — it is skipped and the report says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.baselines import BASELINES, DEFAULT_CACHE, ensure_baseline, is_cached
from embedder import config
from embedder.core.bundle import Bundle, load_bundle

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = REPO_ROOT / config.DEFAULT_BUNDLE
DEFAULT_MODELS = ("cnn", "minilm-fp32", "minilm-int8", "model2vec")
CNN = "cnn"
TEACHER = "minilm-fp32"
CNN_CONFIG = REPO_ROOT / "training" / "configs" / "cnn5m-v2.toml"
SLOW_TO_BUILD = {"model2vec": "distilling it takes ~3 min on 2 cores, over the --quick budget"}


@dataclass(frozen=True)
class ModelSpec:
    """One compared model: its key in results.json, its bundle, and how to label it."""

    key: str
    bundle: Bundle
    label: str
    random_weights: bool

    @property
    def path(self) -> Path:
        return self.bundle.path

    def describe(self) -> dict[str, object]:
        m = self.bundle.manifest
        return {
            "bundle": str(self.path),
            "label": self.label,
            "name": m.name,
            "version": m.version,
            "dim": m.dim,
            "parameters": m.parameters,
            "architecture": m.architecture,
            "max_tokens": m.max_tokens,
            "random_weights": self.random_weights,
        }


def _spec(key: str, path: Path) -> ModelSpec:
    bundle = load_bundle(path)
    random_weights = bool(bundle.manifest.source.get("random_weights", False))
    label = f"{bundle.manifest.name} {bundle.manifest.version}" + (
        " (random weights)" if random_weights else ""
    )
    return ModelSpec(key, bundle, label, random_weights)


def _cnn_path(explicit: Path | None, cache_dir: Path) -> Path:
    if explicit is not None:
        return explicit
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return DEFAULT_BUNDLE
    random_dir = cache_dir / "cnn-random-cnn5m-v2"
    if not (random_dir / "manifest.json").is_file():
        log.warning("%s not found: benchmarking a random-weight CNN of the same architecture", DEFAULT_BUNDLE)
        from training.export import export_random_bundle  # needs torch; only on this fallback

        export_random_bundle(random_dir, str(CNN_CONFIG))
    return random_dir


def resolve_models(
    keys: Sequence[str],
    cnn_bundle: Path | None,
    quick: bool,
    cache_dir: Path = DEFAULT_CACHE,
    on_build: Callable[[str], None] = lambda key: None,
) -> tuple[list[ModelSpec], dict[str, str]]:
    """The runnable models in `keys` order, and {key: reason} for those skipped."""
    specs: list[ModelSpec] = []
    skipped: dict[str, str] = {}
    for key in keys:
        try:
            if key == CNN:
                on_build(key)
                specs.append(_spec(key, _cnn_path(cnn_bundle, cache_dir)))
            elif key in BASELINES:
                if quick and key in SLOW_TO_BUILD and not is_cached(key, cache_dir):
                    skipped[key] = f"not cached and {SLOW_TO_BUILD[key]}"
                    continue
                on_build(key)
                specs.append(_spec(key, ensure_baseline(key, cache_dir)))
            else:
                path = Path(key)
                specs.append(_spec(path.name, path))
        except ImportError as exc:  # building needs the `train` extra (torch)
            skipped[key] = f"cannot build here: {exc}"
    return specs, skipped
