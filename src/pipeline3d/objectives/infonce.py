"""Symmetric InfoNCE for paired embeddings (CLIP's loss): row i of ``a`` matches row i of ``b``.

logits = s * cos(a_i, b_j); loss = (CE(logits, i) + CE(logits^T, i)) / 2. Pairs marked as the same item (e.g. two
shapes of a class captioned by the same class prompt) are left out of both softmaxes: they are not negatives.
``SymmetricInfoNCE`` learns the scale s = exp(logit_scale) with logit_scale initialised at log(1 / T0) and clamped
so s never exceeds ``max_scale`` (CLIP: T0 = 0.07, max 100). Computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline3d.objectives._precision import fp32
from pipeline3d.objectives.base import Logs


def info_nce(
    a: torch.Tensor, b: torch.Tensor, scale: float | torch.Tensor, same: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric cross-entropy over scaled cosine logits; (N, d) and (N, d') -> scalar loss.

    ``same``: optional symmetric (N, N) bool matrix; off-diagonal True pairs are false negatives (masked out).
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0] or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"info_nce needs two (N, d) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] == 0:
        return a.sum() * 0.0 + b.sum() * 0.0
    with fp32(a):
        logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T * scale
        if same is not None:
            if same.shape != logits.shape:
                raise ValueError(f"same must be ({a.shape[0]}, {a.shape[0]}), got {tuple(same.shape)}")
            eye = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
            logits = logits.masked_fill(same.to(a.device) & ~eye, float("-inf"))
        target = torch.arange(a.shape[0], device=a.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class SymmetricInfoNCE(nn.Module):
    """CLIP-style contrastive loss with a learnable temperature.

    Args:
        init_temperature: T0; the scale starts at 1 / T0.
        max_scale: upper bound on the scale 1 / T (the temperature never drops below 1 / max_scale).

    The bound is enforced twice: ``forward`` clamps the log-scale it uses (so s <= max_scale at every step), and
    ``after_step()`` clamps the parameter itself so it cannot drift past the bound where its gradient is zero.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        if max_scale <= 0:
            raise ValueError(f"max_scale must be > 0, got {max_scale}")
        if 1.0 / init_temperature > max_scale:
            raise ValueError(
                f"init_temperature {init_temperature} gives scale {1.0 / init_temperature:.4g} > max_scale {max_scale}"
            )
        self.max_log_scale = math.log(max_scale)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature), dtype=torch.float32))

    def scale(self) -> torch.Tensor:
        """The current scale 1 / T as a tensor in the graph (clamped to max_scale)."""
        return self.logit_scale.clamp(max=self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())

    def forward(self, a: torch.Tensor, b: torch.Tensor, same: torch.Tensor | None = None) -> tuple[torch.Tensor, Logs]:
        loss = info_nce(a, b, self.scale(), same)
        return loss, {"temperature": 1.0 / self.scale().detach(), "loss": loss.detach()}

    @torch.no_grad()
    def after_step(self) -> None:
        """Clamp the parameter after an optimizer step (CLIP clamps logit_scale in place each step)."""
        self.logit_scale.clamp_(max=self.max_log_scale)
