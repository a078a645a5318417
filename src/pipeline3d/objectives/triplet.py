"""Triplet margin losses over embeddings: explicit (anchor, positive, negative) rows and batch-hard mining.

Distances: ``metric="cosine"`` uses d = 1 - cos(a, b); ``metric="euclidean"`` uses d = ||a - b||_2. Both losses
compute in float32 whatever the autocast dtype (a margin of 0.1 on cosines is below bf16's resolution near 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline3d.objectives._precision import fp32

METRICS = ("cosine", "euclidean")

# squared distances are clamped here before the square root: sqrt'(0) is infinite, and identical rows
# (duplicates in a batch) would otherwise turn the whole gradient into NaN
_SQ_EPS = 1e-12


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown triplet metric {metric!r}; known metrics: {', '.join(METRICS)}")


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    # a zero that still depends on x, so backward() works when nothing in the batch can be scored
    return x.sum() * 0.0


def row_distance(a: torch.Tensor, b: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Distance between matching rows of (N, d) tensors -> (N,)."""
    _check_metric(metric)
    with fp32(a):
        a, b = a.float(), b.float()
        if metric == "cosine":
            return 1.0 - (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)
        return (a - b).pow(2).sum(-1).clamp_min(_SQ_EPS).sqrt()


def pairwise_distance(x: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """All pairwise distances of the rows of (N, d) -> (N, N) (the diagonal is ~0 and never used by the losses)."""
    _check_metric(metric)
    with fp32(x):
        x = x.float()
        if metric == "cosine":
            xn = F.normalize(x, dim=-1)
            return 1.0 - xn @ xn.T
        # exact differences, not the |a|^2 + |b|^2 - 2ab expansion (which cancels for close rows), without an
        # (N, N, d) buffer; cdist's gradient at a zero distance is 0, so duplicate rows stay finite
        return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, *, margin: float, metric: str = "cosine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over rows of relu(d(a, p) - d(a, n) + margin).

    Args:
        anchor, positive, negative: (N, d) embeddings; row i of each forms one triplet.
        margin: the required gap between the negative and the positive distance.
        metric: "cosine" (d = 1 - cos) or "euclidean" (d = L2 distance).

    Returns:
        (loss, violated): the scalar mean loss (0 with a graph when N == 0) and a bool tensor (N,) that is True
        where d(a, p) - d(a, n) + margin > 0, i.e. where the triplet contributes a gradient.
    """
    if anchor.ndim != 2 or anchor.shape != positive.shape or anchor.shape != negative.shape:
        raise ValueError(
            "triplet_loss needs three (N, d) tensors of the same shape, got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)} and {tuple(negative.shape)}"
        )
    _check_metric(metric)
    if anchor.shape[0] == 0:
        return _zero_like_graph(anchor), torch.zeros(0, dtype=torch.bool, device=anchor.device)
    gap = row_distance(anchor, positive, metric) - row_distance(anchor, negative, metric) + float(margin)
    return F.relu(gap).mean(), (gap > 0).detach()


def batch_hard_triplet_loss(
    emb: torch.Tensor, labels: torch.Tensor, *, margin: float, metric: str = "cosine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-hard triplet loss (Hermans et al. 2017): per anchor, its farthest positive and nearest negative.

    Args:
        emb: (N, d) embeddings.
        labels: (N,) integer labels; rows with the same label are positives of each other (never the row itself).
        margin: the required gap between the hardest negative and the hardest positive distance.
        metric: "cosine" (d = 1 - cos) or "euclidean" (d = L2 distance).

    Returns:
        (loss, violated): the mean of relu(d_hardest_pos - d_hardest_neg + margin) over anchors that have at least
        one positive and one negative in the batch (0 with a graph when there is none), and a bool tensor (N,)
        True where that anchor's hardest triplet violates the margin (False for skipped anchors).
    """
    if emb.ndim != 2 or labels.ndim != 1 or labels.shape[0] != emb.shape[0]:
        raise ValueError(
            f"batch_hard_triplet_loss needs emb (N, d) and labels (N,), got {tuple(emb.shape)} "
            f"and {tuple(labels.shape)}"
        )
    _check_metric(metric)
    n = emb.shape[0]
    dist = pairwise_distance(emb, metric)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=emb.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    violated = torch.zeros(n, dtype=torch.bool, device=emb.device)
    if not bool(valid.any()):
        return _zero_like_graph(emb), violated
    # masked max / min: excluded entries are pushed out of reach by +-inf so they are never selected
    hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(1)
    hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(1)
    gap = hardest_pos[valid] - hardest_neg[valid] + float(margin)
    violated[valid] = (gap > 0).detach()
    return F.relu(gap).mean(), violated
