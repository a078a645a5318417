"""ArcFace (Deng et al. 2019): additive angular margin logits over L2-normalised class weights.

Target logit s * cos(theta_y + m), other logits s * cos(theta_j). When theta_y + m would pass pi, cos(theta + m)
starts increasing again in theta (the penalty would reward moving away from the class), so past that threshold,
i.e. when cos(theta) < cos(pi - m), the target logit uses the standard fallback cos(theta) - m * sin(m) (the
insightface form, a CosFace-like additive penalty). The fallback is not continuous at the threshold (-1 on the left,
-cos(m) - m * sin(m) <= -1 on the right), but the target logit stays monotonically decreasing in theta over
[0, pi] and always below the plain cosine. No "easy margin" variant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline3d.objectives._precision import fp32


class ArcFace(nn.Module):
    """Cosine classifier with an additive angular margin on the target class.

    Args:
        in_dim: feature width.
        n_classes: number of classes (rows of the weight matrix).
        margin: angular margin m in radians (0 <= m < pi/2).
        scale: logit scale s > 0.

    ``forward(features, labels=None)`` -> (N, n_classes) logits: s * cos to every class centre, with the margin
    applied to the labelled class only when ``labels`` are given (training); without labels (inference) the plain
    scaled cosines.
    """

    def __init__(self, in_dim: int, n_classes: int, *, margin: float, scale: float) -> None:
        super().__init__()
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"ArcFace margin must be in [0, pi/2) radians, got {margin}")
        if scale <= 0:
            raise ValueError(f"ArcFace scale must be > 0, got {scale}")
        if n_classes < 2:
            raise ValueError(f"ArcFace needs n_classes >= 2, got {n_classes}")
        self.margin = float(margin)
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(n_classes, in_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> (N, n_classes) cosines to the normalised class weights (float32)."""
        with fp32(features):
            return F.normalize(features.float(), dim=-1) @ F.normalize(self.weight.float(), dim=-1).T

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(features)
        if labels is None:
            return cos * self.scale
        n_classes = self.weight.shape[0]
        if labels.shape != (features.shape[0],):
            raise ValueError(f"ArcFace labels must be (N,) = ({features.shape[0]},), got {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            raise ValueError(
                f"ArcFace labels must be in [0, {n_classes}), got range [{int(labels.min())}, {int(labels.max())}]"
            )
        m = self.margin
        target_cos = cos.gather(1, labels[:, None]).squeeze(1)
        # sin(theta) >= 0 on [0, pi]; the clamp keeps sqrt's gradient finite at cos = +-1
        sin = (1.0 - target_cos.pow(2)).clamp_min(1e-12).sqrt()
        with_margin = target_cos * math.cos(m) - sin * math.sin(m)
        # theta + m > pi  <=>  cos(theta) < cos(pi - m) = -cos(m)
        fallback = target_cos - m * math.sin(m)
        target = torch.where(target_cos > -math.cos(m), with_margin, fallback)
        one_hot = F.one_hot(labels, n_classes).bool()
        return torch.where(one_hot, target[:, None], cos) * self.scale
