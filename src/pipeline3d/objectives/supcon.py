"""Supervised contrastive loss (Khosla et al. 2020, the "L_out" form: the mean over positives sits outside the log).

For anchor i with positives P(i) (same label, not i) and A(i) = every sample but i:

    loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / T) / sum_{a in A(i)} exp(z_i.z_a / T) )

with z the L2-normalised features. Anchors without a positive are skipped; the loss is the mean over the rest.
The paper's extra factor T / T_base is not applied (it is a constant rescaling of the learning rate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline3d.objectives._precision import fp32


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss over a batch.

    Args:
        features: (N, d) features, or (N, V, d) for V views per sample (the views share the sample's label and
            are flattened into N * V rows, as in the paper's multi-view batches).
        labels: (N,) integer labels.
        temperature: softmax temperature T > 0.

    Returns:
        The scalar loss (float32); 0 with a graph when no anchor has a positive.
    """
    if temperature <= 0:
        raise ValueError(f"supcon temperature must be > 0, got {temperature}")
    if features.ndim == 3:
        n_views = features.shape[1]
        labels = labels.repeat_interleave(n_views)
        features = features.reshape(-1, features.shape[-1])
    if features.ndim != 2 or labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"supcon_loss needs features (N, d) or (N, V, d) and labels (N,), got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )
    n = features.shape[0]
    with fp32(features):
        z = F.normalize(features.float(), dim=-1)
        logits = z @ z.T / float(temperature)
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    # the anchor itself is not in its own denominator: -inf drops it from the logsumexp
    log_prob = logits - logits.masked_fill(eye, float("-inf")).logsumexp(dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return features.sum() * 0.0
    # per anchor: minus the mean log-probability of its positives (the mean sits outside the log)
    per_anchor = -log_prob.masked_fill(~pos, 0.0).sum(1)[has_pos] / n_pos[has_pos]
    return per_anchor.mean()
