"""Hand-crafted targets for pretraining: the shape distributions of a batch's own patch points, in torch.

MaskFeat-style pretraining predicts hand-crafted features instead of raw inputs; here the target is the global
shape distribution of each sample (the same statistics as the ``descriptor`` floor, ``eval.descriptor``): D2 (point
pairs drawn from the step's generator), A3 (angles of drawn triples), the radial histogram and the covariance
eigenvalue ratios, computed on the points of the sample's patches (centred, divided by the RMS radius, so the
scale / translation augmentation does not change them). No labels are read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pipeline3d.models.token_types import content_tokens
from pipeline3d.shape_distributions import D2_MAX, RADIAL_MAX

HISTOGRAMS = ("d2", "a3", "radial")
N_EIGEN = 5  # three normalised eigenvalues + l2/l1 + l3/l1


def patch_points(batch: dict[str, torch.Tensor], group_size: int, point_dim: int) -> torch.Tensor:
    """(B, P, 3) absolute xyz of every sample's patch points (patch tokens: relative points then the centre).

    Every sample of a patch batch has the same number of patches (the tokenizer's ``groups``).
    """
    feat, type_id, valid = batch["feat"], batch["type_id"], batch["valid"].to(torch.bool)
    keep = content_tokens(type_id, valid)
    counts = keep.sum(dim=1)
    if counts.numel() and bool((counts != counts[0]).any()):
        raise ValueError("shape-statistics targets need the same number of patches in every sample of a batch")
    tokens = feat[keep].view(feat.shape[0], -1, feat.shape[-1]).float()
    rel = tokens[..., :-3].reshape(*tokens.shape[:2], group_size, point_dim)[..., :3]
    return (rel + tokens[..., None, -3:]).reshape(feat.shape[0], -1, 3)


def _histogram(values: torch.Tensor, hi: float, bins: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B, bins) normalised histograms of (B, M) values over [0, hi]; past ``hi`` counts in the last bin."""
    index = (values * (bins / hi)).long().clamp(0, bins - 1)
    w = torch.ones_like(values) if weight is None else weight.to(values.dtype)
    counts = torch.zeros(values.shape[0], bins, dtype=values.dtype, device=values.device).scatter_add_(1, index, w)
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1.0)


def shape_statistics(
    points: torch.Tensor, generator: torch.Generator, *, bins: int = 32, n_pairs: int = 4096, n_triples: int = 2048
) -> dict[str, torch.Tensor]:
    """Per sample of (B, P, 3): ``d2``, ``a3``, ``radial`` (B, bins) histograms summing to 1, ``eigen`` (B, 5)."""
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[1] < 3:
        raise ValueError(f"need (B, P >= 3, 3) points, got {tuple(points.shape)}")
    p = points.float()
    centred = p - p.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=-1)
    rms = radius.pow(2).mean(dim=1, keepdim=True).sqrt()
    scale = torch.where(rms > 0, 1.0 / rms.clamp_min(1e-30), torch.zeros_like(rms))
    q = centred * scale[..., None]
    n = q.shape[1]

    def take(index: torch.Tensor) -> torch.Tensor:  # (B, M) point indices -> (B, M, 3)
        return torch.gather(q, 1, index.to(q.device)[..., None].expand(-1, -1, 3))

    # pairs and triples from the step's generator (a repeated index gives a zero distance / no angle: rare at
    # P = 512, and the same in every run)
    pair = torch.randint(0, n, (2, q.shape[0], n_pairs), generator=generator, device=generator.device)
    d2 = (take(pair[0]) - take(pair[1])).norm(dim=-1)
    draw = torch.randint(0, n, (3, q.shape[0], n_triples), generator=generator, device=generator.device)
    a, b, c = (take(i) for i in draw)
    u, v = a - b, c - b
    norms = u.norm(dim=-1) * v.norm(dim=-1)
    ok = norms > 0  # coincident points (or a repeated index) have no angle
    cos = ((u * v).sum(-1) / norms.clamp_min(1e-30)).clamp(-1.0, 1.0)
    cov = centred.transpose(1, 2) @ centred / n
    eig = torch.linalg.eigvalsh(cov).flip(-1).clamp_min(0.0)
    total = eig.sum(-1, keepdim=True)
    ratios = torch.cat([eig / total.clamp_min(1e-30), eig[:, 1:] / eig[:, :1].clamp_min(1e-30)], dim=-1)
    ratios = torch.where(total > 0, ratios, ratios.new_tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 1.0]))
    return {
        "d2": _histogram(d2, D2_MAX, bins),
        "a3": _histogram(torch.arccos(cos), math.pi, bins, ok),
        "radial": _histogram(radius * scale, RADIAL_MAX, bins),
        "eigen": ratios,
    }


def statistics_loss(logits: torch.Tensor, target: dict[str, torch.Tensor], bins: int) -> torch.Tensor:
    """Soft cross-entropy per histogram (``logits`` (B, 3 * bins + 5): one softmax per histogram) minus the
    target's entropy (so a perfect prediction scores 0), plus the MSE of the eigenvalue ratios; averaged."""
    logits = logits.float()
    terms = []
    for k, name in enumerate(HISTOGRAMS):
        t = target[name]
        log_p = F.log_softmax(logits[:, k * bins : (k + 1) * bins], dim=-1)
        terms.append((t * (torch.log(t.clamp_min(1e-12)) - log_p)).sum(-1).mean())
    terms.append(F.mse_loss(logits[:, len(HISTOGRAMS) * bins :], target["eigen"]))
    return torch.stack(terms).mean()


def statistics_width(bins: int) -> int:
    return len(HISTOGRAMS) * bins + N_EIGEN
