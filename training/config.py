"""The training job's configuration: one TOML file, one dataclass per stage.

The whole resolved config is saved in every checkpoint and in the bundle manifest, so a model can always
be traced back to (and rebuilt from) the settings that made it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from training.model import ModelConfig

T = TypeVar("T")


@dataclass
class TeacherConfig:
    batch_size: int = 128
    # "auto": bf16 autocast where the CPU has native bf16 (AVX512_BF16/AMX), else fp32 (bf16 is emulated
    # on AVX2-only machines and runs 5.5x slower there).
    precision: str = "auto"
    # "auto": onnxruntime for fp32 (~1.8-2.1x torch's rate on an AVX2-only CPU), torch for bf16;
    # "onnx" makes an "auto" precision fp32.
    backend: str = "auto"
    # onnxruntime's best batch on short texts is small (245 texts/s at 16 vs 183 at 128, AVX2-only).
    onnx_batch_size: int = 16


@dataclass
class PairsConfig:
    """Teacher-labelled minimal pairs (training/minimal_pairs.py); fraction 0 turns them off."""

    fraction: float = 0.0  # share of the eligible training sentences that get edits
    max_edits: int = 2  # edits per chosen sentence, of different kinds
    per_batch: int = 64  # at most this many edits join a batch, next to their parents
    seed: int = 4321
    antonyms: bool = True  # antonym swaps need WordNet (scripts/install_corpus_sources.sh)


@dataclass
class TrainConfig:
    seed: int = 1234
    max_tokens: int = 128
    batch_size: int = 256
    steps: int = 20000
    lr: float = 3e-3
    embed_lr: float = 1e-2
    weight_decay: float = 0.01
    warmup_steps: int = 500
    # Losses: cosine distillation + MSE on the teacher vectors, in-batch InfoNCE against teacher rows,
    # and a relational term matching the batch's cosine-similarity matrix to the teacher's.
    w_cos: float = 1.0
    w_mse: float = 0.0
    w_infonce: float = 0.1
    tau: float = 0.05
    w_relational: float = 1.0
    # Minimal pairs: (student cos(text, edit) - teacher cos(text, edit))^2 over the batch's pairs.
    w_pair: float = 0.0
    # Gold labels: CoSENT over STS-B *train* pairs (`sts_pairs` per step, appended to the batch, never
    # augmented): the student's cosines must rank the pairs as the human scores do. 0 = off.
    w_sts: float = 0.0
    sts_pairs: int = 32
    sts_scale: float = 20.0
    # Matryoshka: the relational term again on each prefix of the embedding (listed in the manifest).
    matryoshka_dims: list[int] = dataclasses.field(default_factory=list)
    w_matryoshka: float = 1.0
    # Per-token distillation (training/token_targets.py): each position's projected features against
    # the teacher's hidden state there, on the rows whose tokens still line up with the clean text's.
    w_token: float = 0.0
    # "shared": positions go through the embedding's own projection (no added parameter); "separate": a
    # training-only linear map of their own, dropped at export, so the term shapes the trunk only.
    token_head: str = "shared"
    # Neighbour groups (training/neighbours.py): this fraction of each batch's texts is replaced by groups
    # of `neighbour_group` texts from one cluster of the teacher's embeddings (spherical k-means, clusters
    # of ~`neighbour_cluster_size` texts), so the relational terms see close pairs, not only random ones.
    neighbour_fraction: float = 0.0
    neighbour_group: int = 8
    neighbour_cluster_size: int = 64
    # Listwise term: KL between the teacher's and the student's in-batch neighbour distributions (softmax
    # of the off-diagonal cosines / listwise_tau), which weighs each text's nearest pairs most. 0 = off.
    w_listwise: float = 0.0
    listwise_tau: float = 0.05
    # Augmentation of the student's input (teacher target stays the clean text's).
    p_augment: float = 0.5
    token_mask_rate: float = 0.1
    span_delete_max: int = 4
    crop_min_fraction: float = 0.6
    word_dropout_rate: float = 0.1
    init_from_teacher: bool = True
    eval_every: int = 1000
    checkpoint_every: int = 1000
    max_train_texts: int = 0  # 0 = all
    log_every: int = 50


@dataclass
class ExportConfig:
    name: str = "streamrec-cnn"
    version: str = "1.0.0"
    out_dir: str = "models/streamrec-cnn-v1"
    int8: bool = True
    parity_texts: int = 256


@dataclass
class EvalConfig:
    agreement_pairs: int = 20000
    agreement_texts: int = 5000
    knn_k: int = 10


@dataclass
class JobConfig:
    name: str
    path: str
    corpus: dict[str, Any]
    model: ModelConfig
    teacher: TeacherConfig
    pairs: PairsConfig
    train: TrainConfig
    export: ExportConfig
    eval: EvalConfig
    work_dir: str = ".cache"
    # Run directory name under <work_dir>/runs/ (default: the config's name). Probes of one config share
    # its corpus, pairs and teacher caches and differ only here.
    run_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.work_dir) / "runs" / (self.run_name or self.name)


def _build(cls: type[T], table: dict[str, Any], section: str) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - names)
    if unknown:
        raise ValueError(f"[{section}] has unknown keys {unknown}; known: {sorted(names)}")
    return cls(**table)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Apply `section.key=value` overrides (value parsed as a TOML literal, else taken as a string)."""
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep or "." not in dotted:
            raise ValueError(f"override {item!r} must look like section.key=value")
        section, key = dotted.split(".", 1)
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        raw.setdefault(section, {})[key] = parsed


def load_job_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    apply_overrides(raw, overrides or [])
    known = {"name", "work_dir", "corpus", "model", "teacher", "pairs", "train", "export", "eval"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown tables {unknown}")
    return JobConfig(
        name=raw.get("name", Path(path).stem),
        path=str(path),
        work_dir=raw.get("work_dir", ".cache"),
        corpus=raw.get("corpus", {}),
        model=_build(ModelConfig, raw.get("model", {}), "model"),
        teacher=_build(TeacherConfig, raw.get("teacher", {}), "teacher"),
        pairs=_build(PairsConfig, raw.get("pairs", {}), "pairs"),
        train=_build(TrainConfig, raw.get("train", {}), "train"),
        export=_build(ExportConfig, raw.get("export", {}), "export"),
        eval=_build(EvalConfig, raw.get("eval", {}), "eval"),
    )


def config_hash(cfg: Any) -> str:
    """Short stable hash of a (dataclass or dict) config, for cache keys."""
    import hashlib
    import json

    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else cfg
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
