"""PointPatch: the Point-MAE / PointGPT / ReCon encoder family over point patches (``pipeline3d.tokens.patches``).

A patch token = a small shared PointNet over the patch's points (relative to the centre: per-point MLP, max-pool,
the pooled feature concatenated back to every point, a second MLP, max-pool) + an MLP of the centre's xyz as the
position embedding + a type embedding (BOS / POINT / EOS); then the same pre-norm transformer blocks and final
LayerNorm as ``QueryNepa``. It speaks the query encoder's interface (``forward``, ``embed``, ``pool``,
``mask_content``, ``position_embedding``, ``d_model``, ``depth``), so NEPA, MAE, CMAE and the classifier run on
either token kind.

On purpose, unlike Point-MAE: LayerNorm instead of BatchNorm in the PointNet (no batch statistics: an embedding
does not depend on which shapes share its batch, and DDP needs no sync), and special tokens get no patch or centre
embedding (their features are zeros by construction, so they are masked out rather than embedded).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline3d.models.query_nepa import Block, EncoderOutput, init_transformer, pool_tokens, run_blocks
from pipeline3d.models.registry import register_family
from pipeline3d.models.token_types import N_TYPES, content_tokens


class PatchEmbed(nn.Module):
    """Shared PointNet: (..., k, C) patch points -> (..., d)."""

    def __init__(self, point_dim: int, hidden: int, d_model: int) -> None:
        super().__init__()
        self.first = nn.Sequential(
            nn.Linear(point_dim, hidden // 2), nn.LayerNorm(hidden // 2), nn.GELU(), nn.Linear(hidden // 2, hidden)
        )
        self.second = nn.Sequential(
            nn.Linear(2 * hidden, 2 * hidden), nn.LayerNorm(2 * hidden), nn.GELU(), nn.Linear(2 * hidden, d_model)
        )

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        per_point = self.first(points)  # (..., k, h)
        pooled = per_point.amax(dim=-2, keepdim=True).expand_as(per_point)
        return self.second(torch.cat([pooled, per_point], dim=-1)).amax(dim=-2)


class PointPatch(nn.Module):
    """Patch embedding + centre embedding + type embedding, ``depth`` pre-norm blocks, final LayerNorm.

    Args:
        d_model, depth, heads, mlp_ratio: the transformer (as ``QueryNepa``).
        group_size: points per patch (k); point_dim: 3 (xyz) or 6 (xyz + normal).
        embed_hidden: width of the PointNet's pooled feature.
        n_positions: unused by the model (patch positions are their centres); kept so every encoder is built
            with the same arguments.
        n_types: size of the type table.
    """

    def __init__(
        self,
        *,
        d_model: int = 384,
        depth: int = 12,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        group_size: int = 32,
        point_dim: int = 3,
        embed_hidden: int = 256,
        n_positions: int = 0,
        n_types: int = N_TYPES,
    ) -> None:
        super().__init__()
        if min(d_model, depth, heads, group_size, embed_hidden) < 1 or point_dim not in (3, 6):
            raise ValueError("d_model, depth, heads, group_size, embed_hidden must be >= 1 and point_dim 3 or 6")
        self.config: dict[str, Any] = dict(
            name="point_patch",
            d_model=d_model,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            group_size=group_size,
            point_dim=point_dim,
            embed_hidden=embed_hidden,
            n_positions=n_positions,
            n_types=n_types,
        )
        self.d_model, self.depth, self.n_positions = d_model, depth, n_positions
        self.group_size, self.point_dim = group_size, point_dim
        self.feat_dim = group_size * point_dim + 3
        self.patch_embed = PatchEmbed(point_dim, embed_hidden, d_model)
        self.centre_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, d_model))
        self.type_emb = nn.Embedding(n_types, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_transformer(self)

    def _check(self, feat: torch.Tensor) -> None:
        if feat.shape[-1] != self.feat_dim:
            raise ValueError(
                f"feat has {feat.shape[-1]} features per token, the patch encoder expects "
                f"{self.feat_dim} (group_size {self.group_size} x {self.point_dim} + 3): does "
                "tokens.patch match the encoder?"
            )

    def content_embedding(self, feat: torch.Tensor, type_id: torch.Tensor) -> torch.Tensor:
        """PointNet(patch) on patch tokens (zeros elsewhere) + type embedding: what a token holds, not where."""
        self._check(feat)
        points = feat[..., :-3].reshape(*feat.shape[:-1], self.group_size, self.point_dim)
        is_patch = content_tokens(type_id, torch.ones_like(type_id, dtype=torch.bool))[..., None]
        return self.patch_embed(points) * is_patch.to(feat.dtype) + self.type_emb(type_id)

    def position_embedding(self, feat: torch.Tensor, type_id: torch.Tensor | None = None) -> torch.Tensor:
        """MLP(centre) on patch tokens; zero on special tokens (they have no centre)."""
        self._check(feat)
        emb = self.centre_embed(feat[..., -3:])
        if type_id is None:
            return emb
        is_patch = content_tokens(type_id, torch.ones_like(type_id, dtype=torch.bool))[..., None]
        return emb * is_patch.to(emb.dtype)

    def embed(
        self, feat: torch.Tensor, type_id: torch.Tensor, pos: torch.Tensor, *, content_only: bool = False
    ) -> torch.Tensor:
        """Token embeddings (B, T, d): content (+ centre position unless ``content_only``); ``pos`` is not used."""
        z = self.content_embedding(feat, type_id)
        return z if content_only else z + self.position_embedding(feat, type_id)

    @staticmethod
    def mask_content(feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked tokens lose their patch points but keep their centre (the model knows where to fill in)."""
        keep = torch.ones_like(feat[..., :1]).expand(*feat.shape[:-1], feat.shape[-1] - 3)
        keep = torch.cat([keep.masked_fill(mask[..., None], 0.0), torch.ones_like(feat[..., -3:])], dim=-1)
        return feat * keep

    def forward(
        self,
        feat: torch.Tensor,
        type_id: torch.Tensor,
        pos: torch.Tensor,
        valid: torch.Tensor,
        *,
        causal: bool,
        extra_block: torch.Tensor | None = None,
        return_layers: tuple[int, ...] | list[int] = (),
    ) -> EncoderOutput:
        wanted = set(int(k) for k in return_layers)
        if any(k < 0 or k > self.depth for k in wanted):
            raise ValueError(f"return_layers {sorted(wanted)} outside 0..{self.depth}")
        z = self.embed(feat, type_id, pos)
        return self.run_blocks(z, valid, causal=causal, extra_block=extra_block, wanted=wanted)

    def run_blocks(
        self,
        z: torch.Tensor,
        valid: torch.Tensor,
        *,
        causal: bool,
        extra_block: torch.Tensor | None = None,
        wanted: set[int] = frozenset(),
    ) -> EncoderOutput:
        """The transformer over given token embeddings (Point-MAE's encoder runs on the visible ones only)."""
        return run_blocks(self.blocks, self.norm, z, valid, causal=causal, extra_block=extra_block, wanted=wanted)

    def pool(
        self, out: EncoderOutput | torch.Tensor, batch: dict[str, torch.Tensor], how: str = "meanmax", prefix: str = ""
    ) -> torch.Tensor:
        return pool_tokens(out, batch, how, prefix)


_SIZES: dict[str, dict[str, Any]] = {
    "point_patch_tiny": dict(d_model=64, depth=2, heads=2, embed_hidden=64),
    "point_patch_small": dict(d_model=192, depth=4, heads=4, embed_hidden=128),
    "point_patch_base": dict(d_model=384, depth=12, heads=6, embed_hidden=256),  # Point-MAE's encoder size
}


register_family("point_patch", PointPatch, _SIZES)


PATCH_ENCODERS = ("point_patch", *_SIZES)  # registry names that build a PointPatch


def uses_patches(encoder: nn.Module) -> bool:
    return isinstance(encoder, PointPatch)


__all__ = ["PATCH_ENCODERS", "PatchEmbed", "PointPatch", "uses_patches"]
