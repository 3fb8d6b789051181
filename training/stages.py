"""The data stages of the offline job, each cached under <work_dir>/ and resumable:

    corpus   -> <work_dir>/corpus/<name>/{train,heldout}.jsonl     (training/corpus.py)
    pairs    -> <work_dir>/pairs/<key>.jsonl                        minimal-pair edits of the train texts
    teacher  -> <work_dir>/teacher/store/chunk-*.npz                content-addressed: only new texts cost
    tokens   -> <work_dir>/tokens/<key>.npz                         token ids of the train texts
    teacher tokens -> <work_dir>/teacher/tokens/<key>.f16           per-position teacher states (w_token > 0)

Under torchrun, rank 0 builds every cache and the other ranks wait at a barrier, then read it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from training import minimal_pairs, token_targets
from training.config import JobConfig, config_hash
from training.corpus import CorpusConfig, build_corpus, read_corpus, stsb_dir
from training.corpus_readers import read_stsb_pairs
from training.data import TokenizedCorpus, tokenize_corpus
from training.target_store import TargetStore
from training.teacher import (
    TEACHER_DIM,
    TEACHER_NAME,
    choose_precision,
    choose_teacher,
    make_encoder,
    reported_cpu_flags,
    teacher_tokenizer_path,
)
from training.vocab import teacher_vocab


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


def stage_corpus(job: JobConfig, d: Dist) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train records, held-out records), each {"text", "source"}."""
    out = Path(job.work_dir) / "corpus" / job.name
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        build_corpus(CorpusConfig.from_dict(job.corpus), out)
    d.barrier()
    return read_corpus(out / "train.jsonl"), read_corpus(out / "heldout.jsonl")


@dataclass(frozen=True)
class Edits:
    """Minimal-pair edits of the training texts: edit i is `texts[i]`, an edit of train text `parents[i]`."""

    texts: list[str]
    parents: np.ndarray
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def stage_pairs(job: JobConfig, train_texts: list[str], d: Dist) -> Edits:
    """Edits of the training texts (cached as JSONL; empty when [pairs] fraction is 0)."""
    cfg = job.pairs
    if cfg.fraction <= 0:
        return Edits([], np.zeros(0, np.int64), [])
    code = Path(minimal_pairs.__file__).read_bytes()
    digest = hashlib.sha256(code).hexdigest()
    key = config_hash({"n": len(train_texts), "first": train_texts[:3], "cfg": asdict(cfg), "code": digest})
    path = Path(job.work_dir) / "pairs" / f"{key}.jsonl"
    if d.main and not path.exists():
        antonyms = minimal_pairs.Antonyms.from_wordnet() if cfg.antonyms else minimal_pairs.Antonyms({})
        rows = minimal_pairs.edits_for_corpus(train_texts, antonyms, cfg.seed, cfg.fraction, cfg.max_edits)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for parent, edit in rows:
                fh.write(json.dumps({"parent": parent, "text": edit.text, "kind": edit.kind}) + "\n")
        tmp.replace(path)
    d.barrier()
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return Edits(
        [r["text"] for r in records],
        np.asarray([r["parent"] for r in records], np.int64),
        [r["kind"] for r in records],
    )


def target_store(job: JobConfig) -> TargetStore:
    namespace = f"{TEACHER_NAME}@{job.train.max_tokens}"
    return TargetStore(Path(job.work_dir) / "teacher" / "store", namespace, TEACHER_DIM)


def teacher_plan(
    heldout: list[str], train: list[str], edits: Edits, block: int = 50_000
) -> list[tuple[str, list[str]]]:
    """The order the teacher works in: held-out texts, then blocks of training texts, each followed by
    the edits of its texts. Any prefix of the training texts thus gets its edits' targets with it, so a
    probe (`--max-train-texts`) can start while the rest is still being computed."""
    plan = [("heldout", heldout)]
    for start in range(0, len(train), block):
        end = min(start + block, len(train))
        plan.append((f"train {start}-{end}", train[start:end]))
        sel = np.flatnonzero((edits.parents >= start) & (edits.parents < end))
        if len(sel):
            plan.append((f"edits of {start}-{end}", [edits.texts[i] for i in sel]))
    return plan


def stage_teacher(
    job: JobConfig, groups: dict[str, list[str]], d: Dist, plan: list[tuple[str, list[str]]]
) -> dict[str, np.ndarray]:
    """Teacher targets (float16 [N, 384]) for each named group of texts; missing ones are computed in
    `plan` order."""
    if d.main:
        store = target_store(job)
        todo = [(tag, missing) for tag, texts in plan if (missing := store.missing(texts))]
        if todo:
            precision, backend = choose_teacher(job.teacher.precision, job.teacher.backend)
            _log_precision(job, precision, backend, stage="targets")
            onnx_path = Path(job.work_dir) / "teacher" / "onnx" / "model.onnx"
            batch = job.teacher.onnx_batch_size if backend == "onnx" else job.teacher.batch_size
            encode = make_encoder(job.train.max_tokens, batch, precision, backend, onnx_path)
            for tag, texts in todo:
                store.ensure(texts, encode, desc=f"teacher {tag} ({precision}, {backend})")
    d.barrier()
    store = target_store(job)
    return {tag: store.lookup(texts) for tag, texts in groups.items()}


def _log_precision(job: JobConfig, precision: str, backend: str, stage: str) -> None:
    """One line per teacher run in `teacher/precision.jsonl`: `stage` "targets" (pooled, what the manifest
    reports) or "token_targets" (per-position states, always torch)."""
    flags = reported_cpu_flags()
    line = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "precision": precision,
        "backend": backend,
        "stage": stage,
        "cpu_flags": flags,
    }
    path = Path(job.work_dir) / "teacher" / "precision.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
    named = " ".join(flags) or "none of avx2/avx512"
    print(f"teacher precision {precision} on {backend} (CPU flags: {named})")


def stage_tokens(job: JobConfig, texts: list[str], d: Dist, tag: str = "train") -> TokenizedCorpus:
    """Token ids of `texts`, cached. Rank 0 writes the cache; the others wait and read it
    (two ranks writing one cache raced on its temporary file under torchrun)."""
    key = config_hash({"n": len(texts), "first": texts[:3], "last": texts[-1:], "max": job.train.max_tokens})
    cache = Path(job.work_dir) / "tokens" / f"{tag}-{key}.npz"
    tokenizer, max_pieces = teacher_tokenizer_path(), job.train.max_tokens - 2
    if d.main:
        tokenize_corpus(texts, tokenizer, max_pieces, cache)
    d.barrier()
    return tokenize_corpus(texts, tokenizer, max_pieces, cache)


@dataclass(frozen=True)
class GoldPairs:
    """STS-B *train* pairs with their gold scores, tokenised: rows 2k and 2k + 1 of `corpus` are pair k."""

    corpus: TokenizedCorpus
    scores: np.ndarray  # float32 [pairs]


def stage_gold_pairs(job: JobConfig, d: Dist) -> GoldPairs:
    """The STS-B train pairs the gold-label term (train.w_sts) ranks; sts-dev is never read here."""
    pairs = list(read_stsb_pairs(stsb_dir(CorpusConfig.from_dict(job.corpus))))
    texts = [t for left, right, _ in pairs for t in (left, right)]
    return GoldPairs(stage_tokens(job, texts, d, tag="sts"), np.asarray([g for *_, g in pairs], np.float32))


def eval_sample(job: JobConfig, heldout: list[dict[str, str]]) -> list[dict[str, str]]:
    """The held-out records the agreement metrics use (a fixed random sample)."""
    rng = np.random.default_rng(job.train.seed)
    n = min(job.eval.agreement_texts, len(heldout))
    return [heldout[i] for i in sorted(rng.choice(len(heldout), n, replace=False))]


def stage_token_targets(job: JobConfig, corpus: TokenizedCorpus, d: Dist, tag: str = "train") -> np.ndarray:
    """The teacher's hidden state at every position of `corpus` (float16 memmap), cached and resumable."""
    digest = hashlib.sha256(corpus.ids.tobytes() + corpus.offsets.tobytes()).hexdigest()[:16]
    key = config_hash({"tokens": digest, "teacher": TEACHER_NAME, "max": job.train.max_tokens})
    path = Path(job.work_dir) / "teacher" / "tokens" / f"{tag}-{key}.f16"
    vocab = teacher_vocab()
    special = (vocab.cls_id, vocab.sep_id, vocab.pad_id)

    def hidden() -> token_targets.HiddenFn:
        precision = choose_precision(job.teacher.precision)
        _log_precision(job, precision, "torch", stage="token_targets")
        return token_targets.make_hidden(job.train.max_tokens, precision)

    if d.main:
        token_targets.build(corpus, path, hidden, special, batch_size=job.teacher.batch_size)
    d.barrier()
    return token_targets.build(corpus, path, hidden, special)
