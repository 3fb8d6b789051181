"""The offline job, top to bottom: corpus -> teacher targets -> train -> evaluate -> ONNX -> bundle.

    python -m training.train --config training/configs/cnn5m.toml            # single process, 2 threads
    torchrun --nproc_per_node=2 -m training.train --config ...                # DDP (gloo), 1 thread each

Every stage caches its output under <work_dir>/ and the training loop resumes from its last checkpoint,
so re-running the same command after an interrupt picks up where it stopped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from training import evaluate, losses
from training.augment import AugmentConfig
from training.config import JobConfig, TrainConfig, config_hash, load_job_config
from training.data import Collator, TokenizedCorpus, continuation_mask, step_batches, tokenize_corpus
from training.model import CNNEncoder
from training.teacher import compute_targets, teacher_tokenizer_path, token_vectors

CLS_ID, SEP_ID, MASK_ID = 101, 102, 103


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_dist() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        torch.set_num_threads(int(os.environ.get("STREAMREC_TRAIN_THREADS", "2")))
        return Dist()
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=3))
    torch.set_num_threads(1)
    return Dist(rank=dist.get_rank(), world=world)


# ---------------------------------------------------------------- data stages


def stage_corpus(job: JobConfig, d: Dist) -> tuple[list[str], list[str]]:
    from training.corpus import CorpusConfig, build_corpus

    out = Path(job.work_dir) / "corpus" / job.name
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        build_corpus(CorpusConfig.from_dict(job.corpus), out)
    d.barrier()
    return _read_jsonl(out / "train.jsonl"), _read_jsonl(out / "heldout.jsonl")


def _read_jsonl(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh]


def stage_teacher(job: JobConfig, texts: list[str], tag: str, d: Dist, limit: int = 0) -> np.ndarray:
    """Teacher targets for `texts` (or their first `limit`), cached; the cache key ignores `limit`."""
    key = config_hash({"texts": len(texts), "first": texts[:3], "max_tokens": job.train.max_tokens})
    path = Path(job.work_dir) / "teacher" / f"{tag}-{key}.npy"
    if d.main:
        compute_targets(
            texts, path, job.train.max_tokens, batch_size=job.teacher.batch_size, limit=limit or None
        )
    d.barrier()
    targets = np.load(path, mmap_mode="r")
    return targets[:limit] if limit else targets


def stage_tokens(job: JobConfig, texts: list[str], d: Dist) -> TokenizedCorpus:
    """Token ids of the training texts, cached. Rank 0 writes the cache; the others wait and read it
    (two ranks writing one cache raced on its temporary file under torchrun)."""
    key = config_hash({"n": len(texts), "first": texts[:3], "max": job.train.max_tokens})
    cache = Path(job.work_dir) / "tokens" / f"{key}.npz"
    tokenizer, max_pieces = teacher_tokenizer_path(), job.train.max_tokens - 2
    if d.main:
        tokenize_corpus(texts, tokenizer, max_pieces, cache)
    d.barrier()
    return tokenize_corpus(texts, tokenizer, max_pieces, cache)


def eval_sample(job: JobConfig, heldout: list[str]) -> list[str]:
    rng = np.random.default_rng(job.train.seed)
    n = min(job.eval.agreement_texts, len(heldout))
    return [heldout[i] for i in sorted(rng.choice(len(heldout), n, replace=False))]


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


@torch.no_grad()
def encode(model: CNNEncoder, texts: Sequence[str], max_tokens: int, batch_size: int = 256) -> np.ndarray:
    """Student embeddings (not normalised) for evaluation, batched by length."""
    from tokenizers import Tokenizer

    from training.data import pad_batch

    tok = Tokenizer.from_file(str(teacher_tokenizer_path()))
    tok.no_padding()
    tok.no_truncation()
    pieces = [
        np.asarray(e.ids[: max_tokens - 2]) for e in tok.encode_batch(list(texts), add_special_tokens=False)
    ]
    order = np.argsort([len(p) for p in pieces])
    out = np.zeros((len(texts), model.cfg.out_dim), dtype=np.float32)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([pieces[i] for i in idx], CLS_ID, SEP_ID, model.cfg.pad_token_id)
        out[idx] = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    model.train(was_training)
    return out


def run_eval(
    model: CNNEncoder, job: JobConfig, ev_texts: list[str], ev_targets: np.ndarray
) -> dict[str, float]:
    enc = lambda texts: encode(model, texts, job.train.max_tokens)  # noqa: E731
    result = {"stsb_dev_spearman": evaluate.sts_spearman(enc, evaluate.load_sts("dev"))}
    agree = evaluate.teacher_agreement(
        enc(ev_texts), np.asarray(ev_targets, np.float32), job.eval.agreement_pairs
    )
    result.update(agree)
    return result


# ---------------------------------------------------------------- training loop


def train(
    job: JobConfig, corpus: TokenizedCorpus, targets: np.ndarray, ev: tuple[list[str], np.ndarray], d: Dist
) -> CNNEncoder:
    t = job.train
    torch.manual_seed(t.seed)
    model = CNNEncoder(job.model)
    if t.init_from_teacher:
        init_from_teacher(model, job)
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "last.pt"
    opt = make_optimizer(model, job)
    start = restore(ckpt_path, model, opt)
    if start >= t.steps:
        return model
    net: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    aug = AugmentConfig(
        t.p_augment, t.token_mask_rate, t.span_delete_max, t.crop_min_fraction, t.word_dropout_rate, MASK_ID
    )
    collate = Collator(
        CLS_ID, SEP_ID, job.model.pad_token_id, aug, continuation_mask(teacher_tokenizer_path())
    )
    batches = step_batches(corpus.lengths(), t.batch_size, t.seed, start, rank=d.rank, world=d.world)
    log = (run_dir / "log.jsonl").open("a", encoding="utf-8")
    bar = tqdm(total=t.steps, initial=start, desc="train", unit="step", disable=not d.main)
    model.train()
    seen, t0 = 0, time.perf_counter()
    for step, idx in batches:
        if step >= t.steps:
            break
        ids, mask = collate(corpus, idx, np.random.default_rng([t.seed, step, d.rank]))
        teacher = torch.from_numpy(np.asarray(targets[np.sort(idx)], np.float32))[np.argsort(np.argsort(idx))]
        for g, base in zip(opt.param_groups, (t.embed_lr, t.lr, t.lr), strict=True):
            g["lr"] = base * lr_factor(step, t.warmup_steps, t.steps)
        student = net(torch.from_numpy(ids), torch.from_numpy(mask))
        loss, parts = distill_loss(student, teacher, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        seen += len(idx) * d.world
        bar.update(1)
        if d.main and (step + 1) % t.log_every == 0:
            rate = seen / (time.perf_counter() - t0)
            row = {
                "step": step + 1,
                "loss": float(loss),
                **{k: float(v) for k, v in parts.items()},
                "samples_per_s": rate,
            }
            bar.set_postfix(loss=f"{float(loss):.4f}", cos=f"{float(parts['cos']):.4f}", sps=f"{rate:.0f}")
            log.write(json.dumps(row) + "\n")
        if d.main and ((step + 1) % t.eval_every == 0 or step + 1 == t.steps):
            metrics = run_eval(model, job, *ev)
            log.write(json.dumps({"step": step + 1, "eval": metrics}) + "\n")
            log.flush()
            bar.write(f"step {step + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if d.main and ((step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps):
            save_checkpoint(ckpt_path, model, opt, step + 1, job)
    bar.close()
    log.close()
    d.barrier()
    return model


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, t: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    parts = {
        "cos": losses.cosine_loss(student, teacher),
        "infonce": losses.info_nce(student, teacher, t.tau),
        "rel": losses.relational(student, teacher),
        "mse": losses.mse_loss(student, teacher),
    }
    weights = {"cos": t.w_cos, "infonce": t.w_infonce, "rel": t.w_relational, "mse": t.w_mse}
    loss = sum((weights[k] * v for k, v in parts.items()), torch.zeros(()))
    return loss, parts


def restore(path: Path, model: CNNEncoder, opt: torch.optim.Optimizer) -> int:
    """Load the last checkpoint if there is one; return the step to resume from."""
    if not path.exists():
        return 0
    ckpt = torch.load(path, weights_only=False)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    return int(ckpt["step"])


def save_checkpoint(
    path: Path, model: CNNEncoder, opt: torch.optim.Optimizer, step: int, job: JobConfig
) -> None:
    """Atomic write; the checkpoint carries the config so the model can be rebuilt from the file alone."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "config": job.to_dict()},
        tmp,
    )
    tmp.replace(path)


def load_model(path: Path) -> CNNEncoder:
    from training.model import ModelConfig

    ckpt = torch.load(path, weights_only=False)
    model = CNNEncoder(ModelConfig(**ckpt["config"]["model"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


# ---------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--stop-after", choices=["corpus", "teacher", "train"], default=None)
    parser.add_argument(
        "--work-dir", default=None, help="cache/run directory (default: the config's work_dir)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value"
    )
    parser.add_argument("--max-train-texts", type=int, default=0, help="train on the first N texts only")
    parser.add_argument("--out-dir", default=None, help="bundle directory (default: [export].out_dir)")
    args = parser.parse_args(argv)
    job = load_job_config(args.config, args.set)
    if args.work_dir:
        job.work_dir = args.work_dir
    d = setup_dist()
    train_texts, heldout = stage_corpus(job, d)
    if args.stop_after == "corpus":
        return 0
    ev_texts = eval_sample(job, heldout)
    ev_targets = stage_teacher(job, ev_texts, "heldout", d)
    limit = args.max_train_texts or job.train.max_train_texts
    targets = stage_teacher(job, train_texts, "train", d, limit)
    train_texts = train_texts[: len(targets)]
    if args.stop_after == "teacher":
        return 0
    corpus = stage_tokens(job, train_texts, d)
    model = train(job, corpus, targets, (ev_texts, ev_targets), d)
    if d.main and args.stop_after != "train":
        from training.publish import publish

        out_dir = Path(args.out_dir or job.export.out_dir)
        publish(job, model, heldout, (ev_texts, ev_targets), out_dir, calibration_texts=train_texts[:4096])
    if d.world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
