"""The offline job, top to bottom: corpus -> teacher targets -> train -> evaluate -> ONNX -> bundle.

    python -m training.train --config training/configs/cnn5m-v2.toml         # single process, 2 threads
    torchrun --nproc_per_node=2 -m training.train --config ...                # DDP (gloo), 1 thread each

Every stage caches its output under <work_dir>/ and the training loop resumes from its last checkpoint,
so re-running the same command after an interrupt picks up where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from training import losses
from training.augment import AugmentConfig
from training.config import JobConfig, TrainConfig, load_job_config
from training.data import Collator, EditIndex, TokenizedCorpus, continuation_mask, step_batches
from training.model import CNNEncoder, WithPositions, changed_model_fields
from training.neighbours import NeighbourGroups, neighbour_groups
from training.publish import publish
from training.stages import (
    Dist,
    Edits,
    GoldPairs,
    eval_sample,
    setup_dist,
    stage_corpus,
    stage_gold_pairs,
    stage_pairs,
    stage_teacher,
    stage_token_targets,
    stage_tokens,
    teacher_plan,
)
from training.student import run_eval
from training.teacher import token_vectors
from training.token_targets import gather, row_offsets
from training.vocab import teacher_vocab

# ---------------------------------------------------------------- model


def init_from_teacher(model: CNNEncoder, job: JobConfig) -> None:
    """Embedding = PCA of the teacher's per-token outputs (model2vec recipe); skip projection = PCA⁻¹."""
    vecs = token_vectors(Path(job.work_dir) / "teacher" / "token_vectors.npy")
    mean = vecs.mean(axis=0)
    _, _, vt = np.linalg.svd(vecs - mean, full_matrices=False)
    comps = vt[: job.model.embed_dim]  # [E, 384]
    emb = (vecs - mean) @ comps.T
    scale = float(emb.std())
    with torch.no_grad():
        model.embed.weight.copy_(torch.from_numpy(emb / scale))
        model.embed.weight[job.model.pad_token_id].zero_()
        c = job.model.channels
        model.proj.weight[:, c:].copy_(torch.from_numpy(comps.T * scale))
        model.proj.weight[:, :c].mul_(0.1)
        model.proj.bias.copy_(torch.from_numpy(mean))


def make_optimizer(model: torch.nn.Module, job: JobConfig) -> torch.optim.Optimizer:
    t = job.train
    emb, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if name.endswith("embed.weight"):
            emb.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": emb, "lr": t.embed_lr, "weight_decay": 0.0},
        {"params": decay, "lr": t.lr, "weight_decay": t.weight_decay},
        {"params": no_decay, "lr": t.lr, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, betas=(0.9, 0.98))


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- training loop


@dataclass(frozen=True)
class PositionTargets:
    """The teacher's hidden state at every position of a tokenised corpus (training/token_targets.py)."""

    store: np.ndarray  # float16 [positions, 384], memory-mapped
    offsets: np.ndarray  # row of each text's [CLS], len = n_texts + 1

    @classmethod
    def of(cls, store: np.ndarray, corpus: TokenizedCorpus) -> PositionTargets:
        return cls(store, row_offsets(corpus))


@dataclass(frozen=True)
class TrainData:
    """What the loop draws batches from: train texts and their minimal-pair edits, with targets."""

    corpus: TokenizedCorpus
    targets: np.ndarray
    edits: TokenizedCorpus | None
    edit_targets: np.ndarray
    edit_index: EditIndex | None
    positions: PositionTargets | None = None  # per-token targets of `corpus`, when w_token > 0
    edit_positions: PositionTargets | None = None
    gold: GoldPairs | None = None  # STS-B train pairs, when w_sts > 0
    neighbours: NeighbourGroups | None = None  # clusters of the train targets, when neighbour_fraction > 0


@dataclass(frozen=True)
class Batch:
    ids: np.ndarray
    mask: np.ndarray
    teacher: torch.Tensor
    pairs: tuple[torch.Tensor, torch.Tensor]
    # Per-token targets [B, T, 384] and where they hold [B, T] (rows whose tokens line up), or None.
    positions: tuple[torch.Tensor, torch.Tensor] | None = None
    # Gold scores of the STS-B pairs appended after the teacher-labelled rows (left, right, left, ...).
    gold: torch.Tensor | None = None
    # Rows in length order, padded in chunks ((ids, mask, rows) each, the chunks in random order), when the
    # batch mixes lengths (neighbour groups). In eval mode the encoder is padding-independent, so a chunk's
    # rows come out as in one batch; in training BatchNorm takes each chunk's statistics, as it takes each
    # length-bucketed batch's without neighbour groups.
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None


def train(job: JobConfig, data: TrainData, ev: tuple[list[str], np.ndarray], d: Dist) -> CNNEncoder:
    t = job.train
    torch.manual_seed(t.seed)
    model = CNNEncoder(job.model)
    if t.init_from_teacher:
        init_from_teacher(model, job)
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "last.pt"
    view = _training_view(model, t, data)
    head = view.head if isinstance(view, WithPositions) else None
    opt = make_optimizer(view, job)
    start = restore(ckpt_path, model, opt, head, job)
    if start >= t.steps:
        return model
    net = torch.nn.parallel.DistributedDataParallel(view) if d.world > 1 else view
    vocab = teacher_vocab()
    aug = AugmentConfig(
        t.p_augment,
        t.token_mask_rate,
        t.span_delete_max,
        t.crop_min_fraction,
        t.word_dropout_rate,
        vocab.mask_id,
    )
    collate = Collator(vocab.cls_id, vocab.sep_id, vocab.pad_id, aug, continuation_mask(vocab.path))
    batches = step_batches(data.corpus.lengths(), t.batch_size, t.seed, start, rank=d.rank, world=d.world)
    log = (run_dir / "log.jsonl").open("a", encoding="utf-8")
    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", disable=not d.main)
    model.train()
    seen, t0 = 0, time.perf_counter()
    for step, idx in batches:
        if step >= t.steps:
            break
        rng = np.random.default_rng([t.seed, step, d.rank])
        batch = _batch(job, data, collate, idx, rng)
        for g, base in zip(opt.param_groups, (t.embed_lr, t.lr, t.lr), strict=True):
            g["lr"] = base * lr_factor(step, t.warmup_steps, t.steps)
        loss, parts = _step_loss(net, batch, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        seen += len(batch.teacher) * d.world  # teacher-labelled rows (texts + edits), as before gold rows
        bar.update(1)
        if d.main and (step + 1) % t.log_every == 0:
            rate = seen / (time.perf_counter() - t0)
            row = {"step": step + 1, "loss": float(loss), **{k: float(v) for k, v in parts.items()}}
            log.write(json.dumps({**row, "samples_per_s": rate}) + "\n")
            bar.set_postfix(loss=f"{float(loss):.4f}", cos=f"{float(parts['cos']):.4f}", sps=f"{rate:.0f}")
        if d.main and ((step + 1) % t.eval_every == 0 or step + 1 == t.steps):
            metrics = run_eval(model, job, ev, t.matryoshka_dims)
            log.write(json.dumps({"step": step + 1, "eval": metrics}) + "\n")
            log.flush()
            bar.write(f"step {step + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if d.main and ((step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps):
            save_checkpoint(ckpt_path, model, opt, step + 1, job, head=head)
    bar.close()
    log.close()
    d.barrier()
    return model


LENGTH_CHUNK = 64  # rows per padded chunk of a mixed-length (neighbour-group) batch


def with_neighbours(
    idx: np.ndarray, groups: NeighbourGroups, t: TrainConfig, rng: np.random.Generator
) -> np.ndarray:
    """The batch `idx` with its last ~neighbour_fraction of texts replaced by neighbour groups."""
    n_groups = min(round(len(idx) * t.neighbour_fraction / t.neighbour_group), len(idx) // t.neighbour_group)
    if n_groups <= 0:
        return idx
    keep = len(idx) - n_groups * t.neighbour_group
    # A random subset stays (the plan's batches are sorted by length: the tail would always be the longest).
    kept = np.sort(rng.choice(len(idx), keep, replace=False))
    return np.concatenate([idx[kept], groups.draw(rng, n_groups, t.neighbour_group)])


def _training_view(model: CNNEncoder, t: TrainConfig, data: TrainData) -> torch.nn.Module:
    """The module the loop trains: the encoder, or its per-position view when w_token > 0."""
    if t.w_token <= 0:
        return model
    if data.positions is None:
        raise ValueError("train.w_token > 0 needs the per-token teacher targets (TrainData.positions)")
    if t.token_head not in ("shared", "separate"):
        raise ValueError(f"train.token_head must be shared or separate, got {t.token_head!r}")
    return WithPositions(model, separate_head=t.token_head == "separate")


def _step_loss(
    net: torch.nn.Module, batch: Batch, t: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if batch.chunks is not None:
        rows = np.concatenate([r for _, _, r in batch.chunks])
        parts_out = [net(torch.from_numpy(i), torch.from_numpy(m)) for i, m, _ in batch.chunks]
        out = torch.cat(parts_out)[torch.from_numpy(np.argsort(rows))]
    else:
        out = net(torch.from_numpy(batch.ids), torch.from_numpy(batch.mask))
    student, per_position = out if t.w_token > 0 else (out, None)
    n = len(batch.teacher)  # the rows after these are gold pairs, which have no teacher target
    loss, parts = distill_loss(student[:n], batch.teacher, batch.pairs, t)
    if per_position is not None and batch.positions is not None:
        parts["token"] = losses.token_states(per_position[:n], *batch.positions)
        loss = loss + t.w_token * parts["token"]
    if batch.gold is not None:
        gold = student[n:]
        parts["sts"] = losses.cosent(gold[0::2], gold[1::2], batch.gold, t.sts_scale)
        loss = loss + t.w_sts * parts["sts"]
    return loss, parts


def _rows(targets: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """Rows `idx` of a (memory-mapped) float16 array, read in sorted order, as float32 in idx order."""
    return torch.from_numpy(np.asarray(targets[np.sort(idx)], np.float32))[np.argsort(np.argsort(idx))]


def _batch(
    job: JobConfig, data: TrainData, collate: Collator, idx: np.ndarray, rng: np.random.Generator
) -> Batch:
    """One step's inputs: the texts `idx` (augmented) then the edits of some of them (never augmented:
    an edit's words are its meaning), the teacher rows of both, and (parent row, edit row) pairs."""
    if data.neighbours is not None:
        idx = with_neighbours(idx, data.neighbours, job.train, rng)
    seqs = collate.seqs(data.corpus, idx, rng)
    teacher = _rows(data.targets, idx)
    parent_rows = edit_rows = torch.zeros(0, dtype=torch.long)
    eidx = np.zeros(0, np.int64)
    if data.edit_index is not None and data.edits is not None:
        eidx, parent_pos = data.edit_index.for_batch(idx, job.pairs.per_batch, rng)
        if len(eidx):
            seqs += [data.edits.get(int(j)) for j in eidx]
            teacher = torch.cat([teacher, _rows(data.edit_targets, eidx)])
            parent_rows = torch.from_numpy(parent_pos)
            edit_rows = torch.arange(len(idx), len(idx) + len(eidx))
    gold = None
    if data.gold is not None:
        k = rng.choice(len(data.gold.scores), min(job.train.sts_pairs, len(data.gold.scores)), replace=False)
        seqs += [data.gold.corpus.get(int(2 * i + side)) for i in k for side in (0, 1)]
        gold = torch.from_numpy(data.gold.scores[k])
    ids, mask = collate.pad(seqs)
    batch = Batch(ids, mask, teacher, (parent_rows, edit_rows), gold=gold)
    if data.neighbours is not None:
        order = np.argsort([len(q) for q in seqs], kind="stable")
        chunks = np.array_split(order, -(-len(order) // LENGTH_CHUNK))  # even sizes, none above LENGTH_CHUNK
        chunks = [chunks[k] for k in rng.permutation(len(chunks))]
        batch = dataclasses.replace(batch, chunks=[(*collate.pad([seqs[i] for i in c]), c) for c in chunks])
    if data.positions is None:  # built only when train.w_token > 0
        return batch
    width = ids.shape[1]
    target, valid = gather(data.positions.store, data.positions.offsets, idx, width)
    # Cropping and deletions move the tokens; masking keeps them in place (its targets say what was there).
    aligned = torch.tensor([len(seqs[k]) == len(data.corpus.get(int(i))) for k, i in enumerate(idx)])
    valid &= aligned[:, None]
    if len(eidx):
        assert data.edit_positions is not None  # _train_data builds them whenever it builds `positions`
        et, ev = gather(data.edit_positions.store, data.edit_positions.offsets, eidx, width)
        target, valid = torch.cat([target, et]), torch.cat([valid, ev])
    return dataclasses.replace(batch, positions=(target, valid))


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor], t: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    parts = {
        "cos": losses.cosine_loss(student, teacher),
        "infonce": losses.info_nce(student, teacher, t.tau),
        "rel": losses.relational(student, teacher),
        "mse": losses.mse_loss(student, teacher),
    }
    weights = {"cos": t.w_cos, "infonce": t.w_infonce, "rel": t.w_relational, "mse": t.w_mse}
    if t.w_listwise > 0:
        parts["list"] = losses.listwise(student, teacher, t.listwise_tau)
        weights["list"] = t.w_listwise
    if t.w_pair > 0 and len(pairs[0]):
        parts["pair"] = losses.pair_cosine(student, teacher, *pairs)
        weights["pair"] = t.w_pair
    for dim in t.matryoshka_dims:
        parts[f"rel@{dim}"] = losses.relational(student[:, :dim], teacher)
        weights[f"rel@{dim}"] = t.w_matryoshka * t.w_relational
    loss = sum((weights[k] * v for k, v in parts.items()), torch.zeros(()))
    return loss, parts


def restore(
    path: Path,
    model: CNNEncoder,
    opt: torch.optim.Optimizer,
    head: torch.nn.Module | None,
    job: JobConfig,
) -> int:
    """Load the last checkpoint if there is one; return the step to resume from. A checkpoint of another
    model shape (e.g. the run directory of an older default config) is refused in one line."""
    if not path.exists():
        return 0
    ckpt = torch.load(path, weights_only=False)
    changed = changed_model_fields(ckpt["config"]["model"], job.model)
    if changed:
        raise SystemExit(
            f"{path}: checkpoint of another model ([model] {', '.join(changed)} differ); "
            f"remove {path.parent} to start over, or pass --run-name"
        )
    model.load_state_dict(ckpt["model"])
    if head is not None:
        head.load_state_dict(ckpt["token_head"])
    opt.load_state_dict(ckpt["optimizer"])
    return int(ckpt["step"])


def save_checkpoint(
    path: Path,
    model: CNNEncoder,
    opt: torch.optim.Optimizer,
    step: int,
    job: JobConfig,
    *,
    head: torch.nn.Module | None = None,
) -> None:
    """Atomic write; the checkpoint carries the config so the model can be rebuilt from the file alone
    (and a separate per-token head, which training needs to resume but the model does not)."""
    tmp = path.with_suffix(".tmp")
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "config": job.to_dict(),
    }
    if head is not None:
        state["token_head"] = head.state_dict()
    torch.save(state, tmp)
    tmp.replace(path)


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--stop-after", choices=["corpus", "pairs", "teacher", "train"], default=None)
    parser.add_argument(
        "--work-dir", default=None, help="cache/run directory (default: the config's work_dir)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value"
    )
    parser.add_argument("--max-train-texts", type=int, default=0, help="train on the first N texts only")
    parser.add_argument("--out-dir", default=None, help="bundle directory (default: [export].out_dir)")
    parser.add_argument("--run-name", default="", help="run directory under <work_dir>/runs/ (probes)")
    args = parser.parse_args(argv)
    job = load_job_config(args.config, args.set)
    if args.work_dir:
        job.work_dir = args.work_dir
    job.run_name = args.run_name
    d = setup_dist()
    train_records, heldout = stage_corpus(job, d)
    if args.stop_after == "corpus":
        return 0
    train_texts = [r["text"] for r in train_records]
    limit = args.max_train_texts or job.train.max_train_texts
    if limit:
        train_texts = train_texts[:limit]
    edits = stage_pairs(job, train_texts, d)
    if args.stop_after == "pairs":
        return 0
    ev_texts = [r["text"] for r in eval_sample(job, heldout)]
    groups = {"heldout": ev_texts, "train": train_texts, "edits": edits.texts}
    targets = stage_teacher(job, groups, d, teacher_plan(ev_texts, train_texts, edits))
    if args.stop_after == "teacher":
        return 0
    data = _train_data(job, train_texts, edits, targets, d)
    if job.train.w_sts > 0:
        data = dataclasses.replace(data, gold=stage_gold_pairs(job, d))
    if job.train.neighbour_fraction > 0:
        t = job.train
        if t.w_token > 0 or d.world > 1:
            raise SystemExit(
                "train.neighbour_fraction needs one process and train.w_token 0 (chunked batches: a "
                "varying number of forward passes per step)"
            )
        if not 0 < t.neighbour_fraction <= 1:
            raise SystemExit(f"train.neighbour_fraction must be in (0, 1], got {t.neighbour_fraction}")
        cache = job.run_dir / f"neighbours-{t.neighbour_cluster_size}-{t.seed}.npy"
        clusters = neighbour_groups(data.targets, t.neighbour_cluster_size, t.seed, cache)
        data = dataclasses.replace(data, neighbours=clusters)
    model = train(job, data, (ev_texts, targets["heldout"]), d)
    if d.main and args.stop_after != "train":
        out_dir = Path(args.out_dir or job.export.out_dir)
        heldout_texts = [r["text"] for r in heldout]
        publish(
            job,
            model,
            heldout_texts,
            (ev_texts, targets["heldout"]),
            out_dir,
            calibration_texts=train_texts[:4096],
        )
    if d.world > 1:
        dist.destroy_process_group()
    return 0


def _train_data(
    job: JobConfig, texts: list[str], edits: Edits, targets: dict[str, np.ndarray], d: Dist
) -> TrainData:
    corpus = stage_tokens(job, texts, d)
    positions = None
    if job.train.w_token > 0:
        positions = PositionTargets.of(stage_token_targets(job, corpus, d), corpus)
    if not len(edits):
        return TrainData(corpus, targets["train"], None, np.zeros((0, 1), np.float16), None, positions)
    edit_corpus = stage_tokens(job, edits.texts, d, tag="edits")
    edit_positions = None
    if job.train.w_token > 0:
        edit_positions = PositionTargets.of(
            stage_token_targets(job, edit_corpus, d, tag="edits"), edit_corpus
        )
    return TrainData(
        corpus,
        targets["train"],
        edit_corpus,
        targets["edits"],
        EditIndex.build(edits.parents),
        positions,
        edit_positions,
    )


if __name__ == "__main__":
    raise SystemExit(main())
