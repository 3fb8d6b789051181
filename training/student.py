"""Running a student model outside the training loop: embed texts, score them, rebuild from a checkpoint.

Shared by the training loop's periodic evaluation, publishing (export, parity) and the checks, so that
none of those modules imports another (no train <-> publish <-> export cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from training import checks, evaluate
from training.config import JobConfig
from training.model import CNNEncoder, ModelConfig
from training.vocab import teacher_vocab

BatchEncoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


def encode_with(
    run: BatchEncoder, texts: Sequence[str], max_tokens: int, batch_size: int = 256
) -> np.ndarray:
    """Embeddings (not normalised) of `texts` in input order, batched by length through `run(ids, mask)`."""
    vocab = teacher_vocab()
    pieces = vocab.pieces(texts, max_tokens)
    order = np.argsort([len(p) for p in pieces], kind="stable")
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        emb = run(*vocab.batch([pieces[i] for i in idx]))
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        out[idx] = emb
    if out is None:
        raise ValueError("no texts to encode")
    return out


@torch.no_grad()
def encode(model: CNNEncoder, texts: Sequence[str], max_tokens: int) -> np.ndarray:
    """The torch model's embeddings of `texts` (eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        return encode_with(
            lambda ids, mask: model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy(), texts, max_tokens
        )
    finally:
        model.train(was_training)


def quality(
    encoder: Callable[[Sequence[str]], np.ndarray],
    job: JobConfig,
    ev: tuple[list[str], np.ndarray],
    dims: Sequence[int] = (),
) -> dict[str, float]:
    """STS-B dev, held-out teacher agreement (rho, 10-NN) and, per Matryoshka prefix, both again."""
    sts = evaluate.load_sts("dev")
    student = encoder(ev[0])
    teacher = np.asarray(ev[1], np.float32)
    out = {"stsb_dev_spearman": checks.sts_from(encoder, sts)}
    out.update(evaluate.teacher_agreement(student, teacher, job.eval.agreement_pairs))
    for d in dims:
        out[f"stsb_dev_spearman@{d}"] = checks.sts_from(encoder, sts, d)
        agree = evaluate.teacher_agreement(student[:, :d], teacher, job.eval.agreement_pairs)
        out.update({f"{k}@{d}": v for k, v in agree.items()})
    return out


def run_eval(
    model: CNNEncoder, job: JobConfig, ev: tuple[list[str], np.ndarray], dims: Sequence[int] = ()
) -> dict[str, float]:
    return quality(lambda texts: encode(model, texts, job.train.max_tokens), job, ev, dims)


def load_model(path: Path) -> CNNEncoder:
    """Rebuild a model from a checkpoint alone (it carries its config)."""
    ckpt = torch.load(path, weights_only=False)
    model = CNNEncoder(ModelConfig(**ckpt["config"]["model"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()
