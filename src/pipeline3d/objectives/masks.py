"""Random masks of the objectives: NEPA's dual attention mask and MAE/CMAE's token mask.

All draws come from the ``torch.Generator`` the training loop passes in, and every mask is drawn per sample
(the reference samples one dual mask per step and shares it across the batch, spec §10.9).
"""

from __future__ import annotations

import torch

from pipeline3d.models.token_types import QUERY_LIKE, content_tokens, is_any
from pipeline3d.objectives.base import uniform


def warmup_ramp(step: int, total_steps: int, warmup_frac: float) -> float:
    """Linear ramp 0 -> 1 over the first ``warmup_frac * total_steps`` steps (1 when there is no warm-up)."""
    warmup = warmup_frac * total_steps
    if warmup <= 0:
        return 1.0
    return min(1.0, max(0.0, step / warmup))


def dual_mask_probs(step: int, total_steps: int, *, near: float, far: float, warmup_frac: float) -> tuple[float, float]:
    """(p_near, p_far) at ``step``: the configured probabilities scaled by the warm-up ramp (pure in step)."""
    for name, p in (("dual_mask_near", near), ("dual_mask_far", far)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    r = warmup_ramp(step, total_steps, warmup_frac)
    return near * r, far * r


def sample_dual_mask(
    type_id: torch.Tensor,
    valid: torch.Tensor,
    *,
    p_near: float,
    p_far: float,
    window: int,
    type_aware: bool,
    generator: torch.Generator,
) -> torch.Tensor | None:
    """Extra attention blocks on past edges, (B, T, T) bool (True = blocked), or None when both p are 0.

    Edge i -> j with j < i is blocked with probability ``p_near`` when i - j <= ``window`` and ``p_far`` beyond.
    The diagonal and future edges are never set (the causal rule already covers j > i). With ``type_aware``
    only edges between two query-like tokens (POINT/RAY/Q_POINT/Q_RAY) *of the same sample* are eligible.
    """
    if p_near <= 0.0 and p_far <= 0.0:
        return None
    B, T = type_id.shape
    i = torch.arange(T, device=type_id.device)
    dist = i[:, None] - i[None, :]  # i - j
    prob = torch.where(dist > window, p_far, p_near) * (dist > 0)
    block = uniform((B, T, T), generator, type_id.device) < prob
    if type_aware:
        query = is_any(type_id, QUERY_LIKE) & valid.to(torch.bool)
        block &= query[:, :, None] & query[:, None, :]
    return block


def sample_token_mask(
    type_id: torch.Tensor, valid: torch.Tensor, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """(B, T) bool: per sample, ``int(ratio * n)`` random tokens among its ``n`` valid non-special tokens."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {ratio}")
    eligible = content_tokens(type_id, valid.to(torch.bool))
    n_mask = (eligible.sum(1).to(torch.float64) * ratio).floor().long()  # int() of a non-negative number
    # random scores, ineligible tokens pushed past every eligible one; the n_mask lowest scores are masked
    score = uniform(tuple(type_id.shape), generator, type_id.device).masked_fill(~eligible, 2.0)
    rank = score.argsort(dim=1).argsort(dim=1)
    return rank < n_mask[:, None]


def mask_features(feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the features of masked tokens (their type and position ids are kept by the caller)."""
    return feat.masked_fill(mask[..., None], 0.0)
