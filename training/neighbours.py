"""Neighbour groups: batches that hold texts the teacher places close together.

A batch of random texts shows the relational term mostly unrelated pairs (teacher cosines near 0.1),
so the student learns where the bulk sits but not which of several related texts is nearest, which
is what a 10-NN overlap (and a recommender) measures. Grouping the training texts by the teacher's
embedding (spherical k-means) and filling part of every batch with groups of one cluster's members
puts such close pairs in front of the relational and listwise terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


def spherical_kmeans(
    vectors: np.ndarray, n_clusters: int, seed: int, iters: int = 8, chunk: int = 65536
) -> np.ndarray:
    """Cluster label of each row of `vectors` ([N, D], any float dtype) by cosine, int32 [N]."""
    n = len(vectors)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in 1..{n}, got {n_clusters}")
    gen = torch.Generator().manual_seed(seed)
    chunk = min(chunk, max(1024, 2**26 // n_clusters))  # the [chunk, n_clusters] scores stay <= 256 MB

    def rows(a: int, b: int) -> torch.Tensor:
        return F.normalize(torch.from_numpy(np.asarray(vectors[a:b], np.float32)), dim=1)

    pick = torch.randperm(n, generator=gen)[:n_clusters].sort().values.numpy()
    centroids = F.normalize(torch.from_numpy(np.asarray(vectors[pick], np.float32)), dim=1)
    labels = torch.zeros(n, dtype=torch.long)
    for _ in tqdm(range(iters), desc="neighbour clusters", unit="iter"):
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(n_clusters)
        for a in range(0, n, chunk):
            x = rows(a, min(a + chunk, n))
            lab = (x @ centroids.T).argmax(dim=1)
            labels[a : a + len(x)] = lab
            sums.index_add_(0, lab, x)
            counts.index_add_(0, lab, torch.ones(len(x)))
        empty = counts == 0
        # An empty cluster restarts at a random row, so the count of usable groups does not shrink.
        if empty.any():
            re = torch.randint(0, n, (int(empty.sum()),), generator=gen).numpy()
            sums[empty] = F.normalize(torch.from_numpy(np.asarray(vectors[np.sort(re)], np.float32)), dim=1)
        centroids = F.normalize(sums, dim=1)
    return labels.numpy().astype(np.int32)


@dataclass(frozen=True)
class NeighbourGroups:
    """Members of each cluster (rows sorted by label) and where each label's run starts."""

    order: np.ndarray  # int64 row indices sorted by label
    starts: np.ndarray  # int64, len = n_clusters + 1
    labels: np.ndarray  # int32 label of each row

    @classmethod
    def build(cls, labels: np.ndarray) -> NeighbourGroups:
        order = np.argsort(labels, kind="stable").astype(np.int64)
        counts = np.bincount(labels, minlength=int(labels.max()) + 1)
        starts = np.zeros(len(counts) + 1, np.int64)
        starts[1:] = np.cumsum(counts)
        return cls(order, starts, labels)

    def draw(self, rng: np.random.Generator, n_groups: int, size: int) -> np.ndarray:
        """`n_groups` groups of `size` distinct rows, each from one cluster of >= `size` members
        (clusters drawn in proportion to their size, as a random seed text would pick them)."""
        counts = np.diff(self.starts)
        usable = np.flatnonzero(counts >= size)
        if not len(usable):
            raise ValueError(f"no cluster has {size} members: lower train.neighbour_group")
        weights = counts[usable] / counts[usable].sum()
        out = []
        for c in rng.choice(usable, n_groups, p=weights):
            members = self.order[self.starts[c] : self.starts[c + 1]]
            out.append(rng.choice(members, size, replace=False))
        return np.concatenate(out)


def neighbour_groups(targets: np.ndarray, cluster_size: int, seed: int, cache: Path) -> NeighbourGroups:
    """Cluster labels of the training targets (cached at `cache`, an .npy keyed by the caller)."""
    if cache.exists():
        labels = np.load(cache)
        if len(labels) == len(targets):
            return NeighbourGroups.build(labels)
    labels = spherical_kmeans(targets, max(1, len(targets) // cluster_size), seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".tmp.npy")
    np.save(tmp, labels)
    tmp.replace(cache)
    return NeighbourGroups.build(labels)
