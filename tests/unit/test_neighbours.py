"""Neighbour groups (train.neighbour_fraction) and the listwise term (train.w_listwise)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training import losses  # noqa: E402
from training.config import TrainConfig, load_job_config  # noqa: E402
from training.data import Collator, TokenizedCorpus  # noqa: E402
from training.model import CNNEncoder, ModelConfig  # noqa: E402
from training.neighbours import NeighbourGroups, neighbour_groups, spherical_kmeans  # noqa: E402
from training.train import TrainData, _batch, _step_loss, with_neighbours  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def blobs(n_per: int, centres: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows around `centres` random directions (the truth: which direction each row came from)."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(centres, dim))
    truth = np.repeat(np.arange(centres), n_per)
    rows = dirs[truth] + 0.05 * rng.normal(size=(len(truth), dim))
    return rows.astype(np.float16), truth


def test_spherical_kmeans_recovers_separated_directions() -> None:
    rows, truth = blobs(50, 4, 16, seed=0)
    labels = spherical_kmeans(rows, 4, seed=1, chunk=37)  # chunk not dividing N: every row labelled
    # Each true blob lands in one cluster and no two blobs share one.
    assert all(len(set(labels[truth == c])) == 1 for c in range(4))
    assert len(set(labels)) == 4
    with pytest.raises(ValueError, match="n_clusters"):
        spherical_kmeans(rows, 0, seed=1)


def test_groups_are_distinct_members_of_one_cluster_and_small_clusters_are_never_drawn() -> None:
    labels = np.array([0] * 10 + [1] * 3 + [2] * 8, dtype=np.int32)
    groups = NeighbourGroups.build(labels)
    drawn = groups.draw(np.random.default_rng(0), 20, 4).reshape(20, 4)
    for g in drawn:
        assert len(set(g)) == 4
        assert len(set(labels[g])) == 1
        assert labels[g[0]] != 1  # 3 members < group size 4
    with pytest.raises(ValueError, match="neighbour_group"):
        groups.draw(np.random.default_rng(0), 1, 11)


def test_with_neighbours_replaces_the_batch_tail_and_keeps_its_size() -> None:
    groups = NeighbourGroups.build(np.repeat(np.arange(10), 20).astype(np.int32))
    idx = np.arange(1000, 1064)
    t = TrainConfig(neighbour_fraction=0.5, neighbour_group=8)
    out = with_neighbours(idx, groups, t, np.random.default_rng(0))
    assert len(out) == 64
    assert set(out[:32]) <= set(idx) and len(set(out[:32])) == 32
    assert not (out[:32] == idx[:32]).all()  # a random half stays, not the plan's (shortest) first half
    assert (out[32:] < 200).all()
    # However the fraction rounds, a batch never grows.
    whole = TrainConfig(neighbour_fraction=1.0, neighbour_group=8)
    assert len(with_neighbours(np.arange(1000, 1252), groups, whole, np.random.default_rng(0))) == 252
    t0 = TrainConfig(neighbour_fraction=0.01, neighbour_group=8)
    assert (with_neighbours(idx, groups, t0, np.random.default_rng(0)) == idx).all()


def test_cluster_labels_are_cached_and_recomputed_for_other_targets(tmp_path: Path) -> None:
    rows, _ = blobs(40, 3, 8, seed=2)
    cache = tmp_path / "n.npy"
    first = neighbour_groups(rows, 40, seed=3, cache=cache)
    assert cache.exists()
    np.save(cache, np.zeros(len(rows), np.int32))  # a cached file is read, not recomputed
    assert (neighbour_groups(rows, 40, seed=3, cache=cache).labels == 0).all()
    again = neighbour_groups(rows[:60], 20, seed=3, cache=cache)  # another corpus: recomputed
    assert len(again.labels) == 60 and len(first.labels) == 120


def test_listwise_is_zero_for_the_teacher_itself_and_weighs_near_pairs_most() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(16, 8)
    assert float(losses.listwise(teacher, teacher, 0.05)) == pytest.approx(0.0, abs=1e-6)
    # Swapping which of two rows is row 0's nearest costs more than the same swap among far rows.
    t = torch.tensor([[1.0, 0.0, 0.0], [0.95, 0.31, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0], [0.0, 0.1, 0.99]])
    near = t.clone()
    near[[1, 2]] = near[[2, 1]]
    far = t.clone()
    far[[3, 4]] = far[[4, 3]]
    assert float(losses.listwise(near, t, 0.05)) > float(losses.listwise(far, t, 0.05))
    s = torch.randn(16, 8, requires_grad=True)
    losses.listwise(s, teacher, 0.05).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0


def test_a_neighbour_batch_is_padded_in_length_chunks_with_the_same_outputs() -> None:
    lengths = [3, 40, 5, 7, 2, 30, 4, 6] * 20
    rng = np.random.default_rng(0)
    pieces = [rng.integers(1000, 2000, n).astype(np.int32) for n in lengths]
    corpus = TokenizedCorpus(
        np.concatenate(pieces), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    )
    targets = rng.normal(size=(len(lengths), 384)).astype(np.float16)
    clusters = NeighbourGroups.build((np.arange(len(lengths)) % 5).astype(np.int32))
    data = TrainData(corpus, targets, None, np.zeros((0, 384), np.float16), None, neighbours=clusters)
    job = load_job_config(REPO / "training" / "configs" / "tiny.toml", ["train.neighbour_fraction=0.5"])
    collate = Collator(101, 102, 0, None, np.zeros(30522, bool))
    batch = _batch(job, data, collate, np.arange(100), np.random.default_rng(1))
    assert batch.chunks is not None and len(batch.chunks) == 2  # 100 rows, LENGTH_CHUNK 64
    padded = sum(ids.size for ids, _, _ in batch.chunks)
    assert padded < batch.ids.size  # the point: fewer padded positions than one [100, 42] batch
    model = CNNEncoder(ModelConfig(embed_dim=16, channels=16, dilations=[1, 2])).eval()
    chunked, parts = _step_loss(model, batch, job.train)
    assert torch.isfinite(chunked)
    _, whole_parts = _step_loss(model, dataclasses.replace(batch, chunks=None), job.train)
    for name, value in whole_parts.items():
        assert value.item() == pytest.approx(parts[name].item(), rel=1e-4, abs=1e-6), name
