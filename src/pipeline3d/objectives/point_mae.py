"""Point-MAE: mask patches, encode the visible ones, reconstruct the masked patches' points (Chamfer-L2).

Per sample, ``int(mask_ratio * n)`` of its n patch tokens are masked at random (from the step's generator). The
encoder runs on the visible tokens only (BOS/EOS stay visible), gathered to the front of the sequence. A light
decoder (``decoder_depth`` blocks, bidirectional) sees every position: the encoded visible tokens, a learned mask
token at the masked ones, and its own embedding of every patch's centre; a Linear maps each masked output to
``group_size`` points (relative to the centre), scored against the true patch by Chamfer-L2 (xyz only, also when
normals are features).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline3d.models.point_patch import uses_patches
from pipeline3d.models.query_nepa import Block, attention_mask
from pipeline3d.models.token_types import content_tokens
from pipeline3d.objectives.base import Logs, Objective
from pipeline3d.objectives.losses import chamfer_l2
from pipeline3d.objectives.masks import sample_token_mask


def gather_visible(visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (B, Tv), valid (B, Tv)): each sample's visible token positions first (in order), then padding."""
    order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)
    n_visible = visible.sum(dim=1)
    width = int(n_visible.max()) if visible.numel() else 0
    index = order[:, :width]
    return index, torch.arange(width, device=visible.device)[None, :] < n_visible[:, None]


class PointMaeObjective(Objective):
    """Masked patch reconstruction.

    Args:
        encoder: a ``PointPatch`` encoder.
        mask_ratio: fraction of each sample's patches to mask (Point-MAE: 0.6).
        decoder_depth: transformer blocks of the decoder (Point-MAE: 4).
    """

    def __init__(self, encoder: nn.Module, *, mask_ratio: float = 0.6, decoder_depth: int = 4) -> None:
        super().__init__()
        if not uses_patches(encoder):
            raise ValueError("point_mae needs a point-patch encoder (tokens.kind: patch, model.encoder: point_patch_*)")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"point_mae mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_depth < 1:
            raise ValueError(f"point_mae decoder_depth must be >= 1, got {decoder_depth}")
        d = encoder.d_model
        self.encoder, self.mask_ratio = encoder, mask_ratio
        self.mask_token = nn.Parameter(torch.zeros(d))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder_pos = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, d))
        self.decoder_blocks = nn.ModuleList(Block(d, encoder.blocks[0].heads, 4.0) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(d)
        self.predict = nn.Linear(d, encoder.group_size * 3)

    def forward(
        self, batch: dict[str, torch.Tensor], *, step: int, total_steps: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, Logs]:
        feat, type_id, pos, valid = batch["feat"], batch["type_id"], batch["pos"], batch["valid"].to(torch.bool)
        mask = sample_token_mask(type_id, valid, self.mask_ratio, generator)
        index, valid_v = gather_visible(valid & ~mask)
        d = self.encoder.d_model

        def take(x: torch.Tensor) -> torch.Tensor:  # the visible tokens' rows of a (B, T, ...) tensor
            return torch.gather(
                x, 1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
            )

        z = self.encoder.embed(take(feat), take(type_id), take(pos))
        encoded = self.encoder.run_blocks(z, valid_v, causal=False).h
        # back to every position: encoded tokens where visible, the mask token elsewhere
        full = self.mask_token.to(encoded.dtype).expand(*valid.shape, d)
        full = full.scatter(1, index[..., None].expand(*index.shape, d), encoded)
        full = torch.where((valid & ~mask)[..., None], full, self.mask_token.to(encoded.dtype))
        is_patch = content_tokens(type_id, valid)[..., None].to(full.dtype)
        x = full + self.decoder_pos(feat[..., -3:]) * is_patch
        attn = attention_mask(valid, causal=False)
        for block in self.decoder_blocks:
            x = block(x, attn)
        pred = self.predict(self.decoder_norm(x)[mask]).view(-1, self.encoder.group_size, 3)
        patches = feat[mask][:, :-3].reshape(-1, self.encoder.group_size, self.encoder.point_dim)[..., :3]
        loss = chamfer_l2(pred, patches)
        return loss, {"point_mae_loss": loss.detach(), "n_masked": mask.sum()}
