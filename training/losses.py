"""Distillation losses: the student's embedding against the teacher's (normalised) embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()


def mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(F.normalize(student, dim=1), F.normalize(teacher, dim=1))


def info_nce(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """In-batch contrastive: each student row must pick its own teacher row among the batch's."""
    logits = F.normalize(student, dim=1) @ F.normalize(teacher, dim=1).T / tau
    labels = torch.arange(len(student), device=student.device)
    return F.cross_entropy(logits, labels)


def relational(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the batch's student and teacher cosine-similarity matrices (off-diagonal).

    This is the quantity the ranking pipeline feels: which items look alike, not where each one sits.
    """
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher, dim=1)
    diff = s @ s.T - t @ t.T
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    return (diff[off] ** 2).mean()


def listwise(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over rows of KL(teacher || student) between in-batch neighbour distributions: softmax over
    the other rows of cosine / tau. Where the relational term weighs every pair alike, this one weighs
    a text's nearest pairs most (at tau 0.05 a pair 0.15 closer counts e^3 = 20x more)."""
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher, dim=1)
    eye = torch.eye(len(s), dtype=torch.bool, device=s.device)
    log_s = F.log_softmax((s @ s.T / tau).masked_fill(eye, float("-inf")), dim=1)
    log_t = F.log_softmax((t @ t.T / tau).masked_fill(eye, float("-inf")), dim=1)
    kl = log_t.exp() * (log_t - log_s)
    return kl.masked_fill(eye, 0.0).sum(dim=1).mean()


def pair_cosine(
    student: torch.Tensor, teacher: torch.Tensor, left: torch.Tensor, right: torch.Tensor
) -> torch.Tensor:
    """MSE between student and teacher cosines of the given row pairs (a text and its minimal-pair edit).

    The relational term covers these pairs too, but among B^2 others; this one weighs exactly the
    distinctions the edits were made for (negation, swapped roles, ...).
    """
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher, dim=1)
    return (((s[left] * s[right]).sum(1) - (t[left] * t[right]).sum(1)) ** 2).mean()


def token_states(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Squared error of the student's per-position outputs against the teacher's hidden states
    ([B, T, D] each) at the `valid` positions, as a fraction of the teacher states' variance there:
    0 is a perfect match, 1 is no better than predicting their mean."""
    s, t = student[valid], teacher[valid]
    if not len(t):
        return student.sum() * 0.0
    spread = ((t - t.mean(dim=0)) ** 2).sum(dim=1).mean().clamp(min=1e-6)
    return ((s - t) ** 2).sum(dim=1).mean() / spread


def cosent(left: torch.Tensor, right: torch.Tensor, gold: torch.Tensor, scale: float) -> torch.Tensor:
    """CoSENT: log(1 + sum over pairs (i, j) with gold_i > gold_j of exp(scale * (cos_j - cos_i))).

    A ranking loss on the pairs' cosines: blind to a shift common to all of them, so it does not ask
    where cosines sit, but it keeps rewarding wider gaps between pairs scored apart, and so competes
    with the relational term's teacher cosines.
    """
    cos = F.cosine_similarity(left, right, dim=1) * scale
    diff = cos[None, :] - cos[:, None]  # [i, j] = scaled cos_j - cos_i
    diff = diff.masked_fill(~(gold[:, None] > gold[None, :]), float("-inf"))
    return torch.logsumexp(torch.cat([torch.zeros(1, dtype=diff.dtype), diff.flatten()]), dim=0)
