"""MAE: masked-token embedding regression (nepa3d-spec §5), with the fixes of §10.8 as options.

Per sample, ``int(mask_ratio * n)`` of its n content tokens (not BOS/EOS/PAD) get zero features; type and
position are kept, so the encoder knows *where* and *what kind* of token to fill in. A small decoder predicts, at
the same position, the token's clean embedding (computed without gradient); loss = MSE over masked positions.

Options beyond the reference:
- ``bidirectional`` (default true): the encoder attends both ways, a fair MAE baseline; false = the reference's
  causal backbone.
- ``target``: "content" (default: MLP(feat) + type, no position part, which the decoder could copy from its own
  input) or "full" (the reference, position included).
- ``target_encoder``: "online" (the reference: stop-gradient embedding from the trained weights) or "ema"
  (an EMA copy of the encoder embeds the targets, slowing the drift/collapse of a self-referential target).
- ``normalize_target`` (default true): per-token LayerNorm (no affine) of the target. Without it the MSE can
  fall just because the shared token MLP shrinks every embedding (the self-referential target's scale collapse);
  false = the reference's raw MSE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline3d.models.heads import MLPHead
from pipeline3d.objectives.base import Logs, Objective
from pipeline3d.objectives.ema import ema_update, frozen_copy
from pipeline3d.objectives.losses import coherence, masked_mse
from pipeline3d.objectives.masks import sample_token_mask

TARGETS = ("content", "full")
TARGET_ENCODERS = ("online", "ema")


class MaeObjective(Objective):
    """Masked-token reconstruction in embedding space.

    Args:
        encoder: a QueryNepa-like encoder.
        mask_ratio: fraction of each sample's content tokens to mask.
        bidirectional: run the encoder without the causal rule.
        target: "content" or "full" (see the module docstring).
        target_encoder: "online" or "ema".
        ema_momentum: EMA momentum when ``target_encoder == "ema"``.
        normalize_target: LayerNorm the target per token (false = the reference).
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        mask_ratio: float = 0.4,
        bidirectional: bool = True,
        target: str = "content",
        target_encoder: str = "online",
        ema_momentum: float = 0.996,
        normalize_target: bool = True,
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"mae target must be one of {TARGETS}, got {target!r}")
        if target_encoder not in TARGET_ENCODERS:
            raise ValueError(f"mae target_encoder must be one of {TARGET_ENCODERS}, got {target_encoder!r}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mae mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = encoder
        self.decoder = MLPHead(encoder.d_model, encoder.d_model)
        self.mask_ratio, self.bidirectional, self.target = mask_ratio, bidirectional, target
        self.normalize_target, self.ema_momentum = normalize_target, ema_momentum
        self.teacher = frozen_copy(encoder) if target_encoder == "ema" else None

    def train(self, mode: bool = True) -> "MaeObjective":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def after_step(self) -> None:
        if self.teacher is not None:
            ema_update(self.teacher, self.encoder, self.ema_momentum)

    def forward(
        self, batch: dict[str, torch.Tensor], *, step: int, total_steps: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, Logs]:
        feat, type_id, pos, valid = batch["feat"], batch["type_id"], batch["pos"], batch["valid"]
        mask = sample_token_mask(type_id, valid, self.mask_ratio, generator)
        out = self.encoder(self.encoder.mask_content(feat, mask), type_id, pos, valid, causal=not self.bidirectional)
        pred = self.decoder(out.h)
        with torch.no_grad():
            embedder = self.teacher if self.teacher is not None else self.encoder
            target = embedder.embed(feat, type_id, pos, content_only=self.target == "content")
            if self.normalize_target:
                target = F.layer_norm(target, target.shape[-1:])
        loss = masked_mse(pred, target, mask)
        return loss, {"mae_loss": loss.detach(), "n_masked": mask.sum(), "target_coherence": coherence(target[mask])}
