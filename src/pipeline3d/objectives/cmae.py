"""CMAE-3D style objective: a masked student against an EMA teacher that sees everything.

The teacher is a frozen copy of the encoder (``requires_grad=False``, part of the state_dict so a resumed run
continues with the exact teacher), updated by EMA in ``after_step()``. Both run bidirectionally. Per step:

    total = lambda_occ  * BCE(occ_head(student pooled), occ_target)                 R-MAE occupancy target
          + lambda_feat * mean_k MSE(dec_k(student h), LN(teacher layer k))       on masked positions
          + lambda_nce  * InfoNCE(token_head(student h_i), teacher h_i)           masked tokens of the batch
          + lambda_view * InfoNCE(view_head(student pooled), teacher pooled(v2))  shapes of the batch
          + lambda_stats * H(stats_head(student pooled), shape statistics)        MaskFeat-style target

- Feature reconstruction: one small decoder per depth in ``feat_depths`` reads the student's final hidden
  states and regresses the teacher's residual stream after that block (per-token LayerNorm, no affine, so deep
  layers with a larger scale do not dominate). Default depths: ceil(L·i/4) for i = 1..4, deduplicated, so an
  encoder with fewer than 4 blocks uses each block it has once (depth 2 -> [1, 2]).
- Token InfoNCE: the positive of a masked student token is the teacher token at the same position of the same
  sample; every other selected token of the batch is a negative. At most ``nce_max_tokens`` masked tokens are
  drawn (from the step's generator) so the N x N logits stay small at the reference size.
- Two-view term: query = the student's pooled masked view 1, key = the teacher's pooled view 2 (``v2_*`` keys,
  an independent token draw of the same shape); the other shapes of the batch are negatives.
- Shape statistics (patch tokens only): the student's pooled masked view predicts the shape distributions of the
  whole sample's points (D2 / A3 / radial histograms and covariance eigenvalue ratios, ``objectives.shape_stats``):
  a hand-crafted target (MaskFeat's idea) that says what a global shape descriptor would see.
- A term whose lambda is 0 builds no head and is not computed; the rest are logged as ``<term>_loss``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline3d.models.heads import MLPHead
from pipeline3d.models.point_patch import uses_patches
from pipeline3d.objectives.base import Logs, Objective
from pipeline3d.objectives.ema import ema_update, frozen_copy
from pipeline3d.objectives.losses import info_nce, masked_mse
from pipeline3d.objectives.masks import sample_token_mask
from pipeline3d.objectives.shape_stats import patch_points, shape_statistics, statistics_loss, statistics_width

VIEW_KEYS = ("v2_feat", "v2_type_id", "v2_pos", "v2_valid")


def default_feat_depths(depth: int, n: int = 4) -> list[int]:
    """``n`` evenly spaced block depths in 1..depth (fewer when the encoder has fewer blocks)."""
    return sorted({math.ceil(depth * i / n) for i in range(1, n + 1)})


class CmaeObjective(Objective):
    """Masked student + EMA teacher with occupancy, multi-scale feature, token and view losses.

    Args:
        encoder: a QueryNepa-like encoder (the student; ``objective.encoder``).
        mask_ratio: fraction of each sample's content tokens the student does not see.
        ema_momentum: teacher <- m * teacher + (1 - m) * student after each step.
        occ_grid: G of the occupancy target (B, G^3) (``batch["occ_target"]``).
        lambda_occ, lambda_feat, lambda_nce, lambda_view: term weights.
        temperature: InfoNCE temperature (token and view terms).
        feat_depths: teacher depths to regress (default: 4 evenly spaced).
        nce_max_tokens: cap on the masked tokens entering the token InfoNCE.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        mask_ratio: float = 0.6,
        ema_momentum: float = 0.996,
        occ_grid: int = 16,
        lambda_occ: float = 1.0,
        lambda_feat: float = 1.0,
        lambda_nce: float = 0.6,
        lambda_view: float = 0.3,
        lambda_stats: float = 0.0,
        stats_bins: int = 32,
        temperature: float = 0.1,
        feat_depths: list[int] | None = None,
        nce_max_tokens: int = 1024,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"cmae mask_ratio must be in (0, 1), got {mask_ratio}")
        if not 0.0 <= ema_momentum <= 1.0:
            raise ValueError(f"cmae ema_momentum must be in [0, 1], got {ema_momentum}")
        if temperature <= 0:
            raise ValueError(f"cmae temperature must be > 0, got {temperature}")
        if lambda_occ > 0 and occ_grid < 1:
            raise ValueError("cmae lambda_occ > 0 needs occ_grid >= 1 (and a dataset built with occ_grid)")
        if lambda_stats > 0 and not uses_patches(encoder):
            raise ValueError("cmae lambda_stats > 0 needs a point-patch encoder (tokens.kind: patch)")
        if stats_bins < 2:
            raise ValueError(f"cmae stats_bins must be >= 2, got {stats_bins}")
        lambdas = dict(occ=lambda_occ, feat=lambda_feat, nce=lambda_nce, view=lambda_view, stats=lambda_stats)
        if any(v < 0 for v in lambdas.values()) or not any(v > 0 for v in lambdas.values()):
            raise ValueError(f"cmae lambdas must be >= 0 with at least one > 0, got {lambdas}")
        depth, d = encoder.depth, encoder.d_model
        depths = default_feat_depths(depth) if feat_depths is None else sorted({int(k) for k in feat_depths})
        if not depths or depths[0] < 1 or depths[-1] > depth:
            raise ValueError(f"cmae feat_depths {feat_depths} must be non-empty and within 1..{depth}")
        self.encoder = encoder
        self.teacher = frozen_copy(encoder)
        self.lambdas = {k: float(v) for k, v in lambdas.items() if v > 0}
        self.mask_ratio, self.ema_momentum, self.temperature = mask_ratio, ema_momentum, temperature
        self.occ_grid, self.feat_depths, self.nce_max_tokens = occ_grid, depths, nce_max_tokens
        self.occ_head = MLPHead(d, occ_grid**3) if "occ" in self.lambdas else None
        self.feat_decoders = nn.ModuleDict({str(k): MLPHead(d, d) for k in depths}) if "feat" in self.lambdas else None
        self.token_head = MLPHead(d, d, norm=True) if "nce" in self.lambdas else None
        self.view_head = MLPHead(d, d, norm=True) if "view" in self.lambdas else None
        self.stats_bins = stats_bins
        self.stats_head = MLPHead(d, statistics_width(stats_bins)) if "stats" in self.lambdas else None

    def train(self, mode: bool = True) -> "CmaeObjective":
        super().train(mode)
        self.teacher.eval()  # the teacher never trains (matters once it has dropout or norms with state)
        return self

    @torch.no_grad()
    def reset_teacher(self) -> None:
        """Copy the student into the teacher (after loading pretrained encoder weights into ``encoder``)."""
        self.teacher.load_state_dict(self.encoder.state_dict())

    def after_step(self) -> None:
        ema_update(self.teacher, self.encoder, self.ema_momentum)

    def forward(
        self, batch: dict[str, torch.Tensor], *, step: int, total_steps: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, Logs]:
        feat, type_id, pos, valid = batch["feat"], batch["type_id"], batch["pos"], batch["valid"]
        mask = sample_token_mask(type_id, valid, self.mask_ratio, generator)
        student = self.encoder(self.encoder.mask_content(feat, mask), type_id, pos, valid, causal=False)
        with torch.no_grad():
            teacher = self.teacher(
                feat,
                type_id,
                pos,
                valid,
                causal=False,
                return_layers=self.feat_depths if self.feat_decoders is not None else (),
            )
        terms: dict[str, torch.Tensor] = {}
        logs: Logs = {}
        needs_pool = any(h is not None for h in (self.occ_head, self.view_head, self.stats_head))
        pooled = self.encoder.pool(student, batch, "mean") if needs_pool else None
        if self.occ_head is not None:
            terms["occ"] = self._occupancy(pooled, batch)
        if self.feat_decoders is not None:
            per_depth = {
                k: masked_mse(
                    self.feat_decoders[str(k)](student.h),
                    F.layer_norm(teacher.layers[k], teacher.layers[k].shape[-1:]),
                    mask,
                )
                for k in self.feat_depths
            }
            terms["feat"] = torch.stack(list(per_depth.values())).mean()
            logs.update({f"feat_loss_d{k}": v.detach() for k, v in per_depth.items()})
        if self.token_head is not None:
            terms["nce"] = self._token_nce(student.h, teacher.h, mask, generator)
        if self.view_head is not None:
            terms["view"] = self._view_nce(pooled, batch)
        if self.stats_head is not None:
            points = patch_points(batch, self.encoder.group_size, self.encoder.point_dim)
            target = shape_statistics(points, generator, bins=self.stats_bins)
            terms["stats"] = statistics_loss(self.stats_head(pooled), target, self.stats_bins)
        total = sum(self.lambdas[name] * value for name, value in terms.items())
        logs.update({f"{name}_loss": value.detach() for name, value in terms.items()})
        logs.update(cmae_loss=total.detach(), n_masked=mask.sum())
        return total, logs

    def _occupancy(self, pooled: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "occ_target" not in batch:
            raise KeyError("cmae lambda_occ > 0 needs batch['occ_target']: build the dataset with occ_grid")
        target = batch["occ_target"].to(pooled.dtype)
        if target.shape[1:] != (self.occ_grid**3,):
            raise ValueError(
                f"occ_target has shape {tuple(target.shape)}, cmae expects (B, {self.occ_grid**3}) "
                f"for occ_grid={self.occ_grid}"
            )
        return F.binary_cross_entropy_with_logits(self.occ_head(pooled), target)

    def _token_nce(
        self, h_student: torch.Tensor, h_teacher: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        rows, cols = mask.nonzero(as_tuple=True)
        if rows.numel() > self.nce_max_tokens:
            keep = torch.randperm(rows.numel(), generator=generator, device=generator.device)
            keep = keep[: self.nce_max_tokens].to(rows.device)
            rows, cols = rows[keep], cols[keep]
        return info_nce(self.token_head(h_student[rows, cols]), h_teacher[rows, cols], self.temperature)

    def _view_nce(self, pooled: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [k for k in VIEW_KEYS if k not in batch]
        if missing:
            raise KeyError(f"cmae lambda_view > 0 needs a two-view batch (dataset two_views=True); missing {missing}")
        with torch.no_grad():
            view2 = self.teacher(
                batch["v2_feat"], batch["v2_type_id"], batch["v2_pos"], batch["v2_valid"], causal=False
            )
            key = self.teacher.pool(view2, batch, "mean", prefix="v2_")
        return info_nce(self.view_head(pooled), key, self.temperature)
