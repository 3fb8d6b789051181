"""The gold-label term (train.w_sts): CoSENT over STS-B train pairs appended to a distillation batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training import losses  # noqa: E402
from training.config import load_job_config  # noqa: E402
from training.corpus_readers import read_stsb, read_stsb_pairs  # noqa: E402
from training.data import Collator, TokenizedCorpus  # noqa: E402
from training.model import CNNEncoder, ModelConfig  # noqa: E402
from training.stages import GoldPairs  # noqa: E402
from training.train import TrainData, _batch, _step_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLS, SEP, PAD = 101, 102, 0


def corpus_of(lengths: list[int], seed: int) -> TokenizedCorpus:
    rng = np.random.default_rng(seed)
    pieces = [rng.integers(1000, 2000, n).astype(np.int32) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedCorpus(np.concatenate(pieces), offsets)


def test_cosent_is_small_when_cosines_rank_as_the_gold_scores_and_large_when_reversed() -> None:
    left = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    right = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # cosines 1, 0.71, 0
    gold = torch.tensor([5.0, 2.5, 0.0])
    good = float(losses.cosent(left, right, gold, 20.0))
    bad = float(losses.cosent(left, right, gold.flip(0), 20.0))
    assert good < 0.01  # exp(20 * (0.71 - 1)) = 0.003 for the closest two
    assert bad > 10.0
    # Ties in gold carry no order: three equal scores give log(1 + 0) whatever the cosines.
    assert float(losses.cosent(left, right, torch.full((3,), 3.0), 20.0)) == 0.0


def test_cosent_gradient_pulls_the_higher_scored_pair_together() -> None:
    left = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    right = torch.tensor([[0.0, 1.0], [1.0, 1.0]], requires_grad=True)  # cosines 0, 0.71
    losses.cosent(left, right, torch.tensor([4.0, 1.0]), 20.0).backward()
    assert right.grad is not None
    # Pair 0 (gold 4) must move towards its left (+x), pair 1 (gold 1) away from it.
    assert right.grad[0, 0] < 0 < right.grad[1, 0]


@pytest.mark.requires_stsb
def test_gold_pairs_come_from_sts_train_in_the_order_the_corpus_reads_them() -> None:
    stsb = REPO.parent / "shared" / "data" / "stsb"
    pairs = list(read_stsb_pairs(stsb))
    assert len(pairs) > 5000 and all(0.0 <= g <= 5.0 for *_, g in pairs)
    assert [t for a, b, _ in pairs for t in (a, b)] == list(read_stsb(stsb))


def test_gold_rows_follow_the_teacher_rows_and_only_the_sts_term_sees_them() -> None:
    tiny = REPO / "training" / "configs" / "tiny.toml"
    job = load_job_config(tiny, ["train.w_sts=1.0", "train.sts_pairs=3"])
    corpus, gold_corpus = corpus_of([4, 6, 3, 5], seed=0), corpus_of([3, 4, 5, 2, 6, 3, 4, 4], seed=1)
    targets = np.random.default_rng(2).normal(size=(4, 384)).astype(np.float16)
    gold = GoldPairs(gold_corpus, np.asarray([5.0, 0.5, 3.0, 1.0], np.float32))
    data = TrainData(corpus, targets, None, np.zeros((0, 384), np.float16), None, gold=gold)
    collate = Collator(CLS, SEP, PAD, None, np.zeros(30522, bool))
    batch = _batch(job, data, collate, np.arange(4), np.random.default_rng(3))
    assert batch.gold is not None and len(batch.teacher) == 4 and len(batch.ids) == 4 + 2 * 3
    for k, score in enumerate(batch.gold.tolist()):
        pair = int(np.flatnonzero(gold.scores == score)[0])
        for side in (0, 1):
            ids = gold_corpus.get(2 * pair + side)
            assert batch.ids[4 + 2 * k + side, 1 : 1 + len(ids)].tolist() == ids.tolist()
    model = CNNEncoder(ModelConfig(embed_dim=16, channels=16, dilations=[1]))
    loss, parts = _step_loss(model, batch, job.train)
    assert set(parts) >= {"cos", "rel", "sts"} and torch.isfinite(loss)
    model.eval()  # batch norm in eval mode: a row's output does not depend on its batch-mates
    loss, parts = _step_loss(model, batch, job.train)
    # The same texts without the gold rows: every distillation term is unchanged, so none saw them.
    plain = _batch(job, dataclasses.replace(data, gold=None), collate, np.arange(4), np.random.default_rng(3))
    off, off_parts = _step_loss(model, plain, job.train)
    assert set(off_parts) == set(parts) - {"sts"}
    for name, value in off_parts.items():
        assert value.item() == pytest.approx(parts[name].item(), rel=1e-5, abs=1e-7), name
    assert loss.item() - off.item() == pytest.approx(parts["sts"].item(), rel=1e-4)  # w_sts = 1
