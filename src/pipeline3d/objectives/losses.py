"""Loss primitives shared by the objectives (kept separate so they can be checked against hand-computed values).

They compute in float32 whatever the autocast dtype: cosines and softmaxes over low-temperature logits lose too
much in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    # a zero that still depends on x, so backward() works when a batch happens to have nothing to score
    return x.sum() * 0.0


def cosine_loss(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(pred, target) over positions where ``keep`` (…, d) / (…) is True."""
    if not bool(keep.any()):
        return _zero_like_graph(pred)
    cos = F.cosine_similarity(pred[keep].float(), target[keep].float(), dim=-1, eps=1e-6)
    return (1.0 - cos).mean()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the selected positions (mean over positions and channels)."""
    if not bool(keep.any()):
        return _zero_like_graph(pred)
    return F.mse_loss(pred[keep].float(), target[keep].float())


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE over N pairs (N, d): query i's positive is key i, every other key is a negative.

    loss = mean_i [ -log softmax_j( cos(q_i, k_j) / temperature )_i ].
    """
    if query.shape[0] == 0:
        return _zero_like_graph(query)
    logits = F.normalize(query.float(), dim=-1) @ F.normalize(key.float(), dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))


@torch.no_grad()
def coherence(x: torch.Tensor) -> torch.Tensor:
    """||mean_i x_i/|x_i| ||^2 over rows of (N, d): the mean pairwise cosine (self-pairs included).

    A collapse monitor for self-referential targets: it tends to 1 when every target points the same way.
    """
    if x.shape[0] == 0:
        return x.new_zeros((), dtype=torch.float32)
    return F.normalize(x.float(), dim=-1).mean(0).pow(2).sum().detach()


def chamfer_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Chamfer-L2 between point sets (M, k, 3) and (M, j, 3): mean nearest squared distance both ways, summed
    (Point-MAE's reconstruction loss), averaged over the M sets."""
    if pred.shape[0] == 0:
        return _zero_like_graph(pred)
    d2 = ((pred.float()[:, :, None, :] - target.float()[:, None, :, :]) ** 2).sum(-1)  # (M, k, j)
    return d2.min(dim=2).values.mean() + d2.min(dim=1).values.mean()
