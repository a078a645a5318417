"""QueryNepa: a pre-norm transformer over 15-d query/answer tokens (nepa3d-spec §5), built on SDPA.

Differences from the reference, on purpose:
- position ids come from the batch (``pos``, a fixed segment layout) instead of the token index, so a token's
  position does not move when another segment is shorter (the reference's EOS shift);
- variable-length batches: PAD keys are masked out instead of computing dead MISSING_RAY tokens;
- attention may be causal or bidirectional per call (MAE/CMAE want bidirectional), with an optional per-sample
  extra block mask (NEPA's dual mask, sampled per sample rather than once per batch);
- a final LayerNorm (the reference has none); the NEPA prediction head lives in the objective, not here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pipeline3d.models.registry import register_family
from pipeline3d.models.token_types import N_TYPES, content_tokens


class EncoderOutput(NamedTuple):
    z: torch.Tensor  # (B, T, d) token embeddings fed to the first block
    h: torch.Tensor  # (B, T, d) final hidden states, after the final LayerNorm
    layers: dict[int, torch.Tensor]  # depth k -> residual stream after block k (k=0: z), no final norm


def attention_mask(
    valid: torch.Tensor, *, causal: bool, extra_block: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, T, T), True = query i may attend key j; None when nothing is blocked.

    Combines key padding (``valid``), the causal rule (j <= i) and ``extra_block`` (B, T, T; True = blocked).
    The diagonal is always allowed, so no row is empty: valid queries keep themselves, and PAD queries (whose
    output nobody reads) attend only to themselves instead of producing NaN.
    """
    B, T = valid.shape
    # (a meta tensor has no values to test: the tests' shape-only passes take the masked path)
    if extra_block is None and not causal and not valid.is_meta and bool(valid.all()):
        return None
    allowed = valid[:, None, :] & valid[:, :, None]  # (B, T, T): valid query -> valid key
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    if extra_block is not None:
        if extra_block.shape != (B, T, T):
            raise ValueError(f"extra_block must have shape {(B, T, T)}, got {tuple(extra_block.shape)}")
        allowed = allowed & ~extra_block.to(torch.bool)
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=valid.device)
    return allowed[:, None]


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.heads = heads
        hidden = int(round(d_model * mlp_ratio))
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attn.transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class QueryNepa(nn.Module):
    """Token MLP + type + position embeddings, ``depth`` pre-norm blocks, final LayerNorm.

    Args:
        d_model: width.
        depth: number of transformer blocks.
        heads: attention heads (must divide d_model).
        mlp_ratio: FFN hidden width / d_model.
        n_positions: size of the position table; every ``pos`` id must be below it (``2 + P + R`` of the tokens).
        feat_dim: per-token feature size (15 in the token layout).
        n_types: size of the type table (10 in the token layout).
    """

    def __init__(
        self,
        *,
        d_model: int = 384,
        depth: int = 8,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        n_positions: int = 514,
        feat_dim: int = 15,
        n_types: int = N_TYPES,
    ) -> None:
        super().__init__()
        if min(d_model, depth, heads, n_positions, feat_dim, n_types) < 1:
            raise ValueError("d_model, depth, heads, n_positions, feat_dim and n_types must all be >= 1")
        self.config: dict[str, Any] = dict(
            name="query_nepa",
            d_model=d_model,
            depth=depth,
            heads=heads,
            mlp_ratio=mlp_ratio,
            n_positions=n_positions,
            feat_dim=feat_dim,
            n_types=n_types,
        )
        self.d_model, self.depth, self.n_positions, self.feat_dim = d_model, depth, n_positions, feat_dim
        self.token_mlp = nn.Sequential(nn.Linear(feat_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.type_emb = nn.Embedding(n_types, d_model)
        self.pos_emb = nn.Embedding(n_positions, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_transformer(self)

    def embed(
        self, feat: torch.Tensor, type_id: torch.Tensor, pos: torch.Tensor, *, content_only: bool = False
    ) -> torch.Tensor:
        """Token embeddings (B, T, d) = MLP(feat) + type embedding (+ position embedding unless content_only)."""
        if feat.shape[-1] != self.feat_dim:
            raise ValueError(f"feat has {feat.shape[-1]} features per token, the encoder expects {self.feat_dim}")
        z = self.token_mlp(feat) + self.type_emb(type_id)
        if content_only:
            return z
        self._check_positions(pos)
        return z + self.pos_emb(pos)

    def _check_positions(self, pos: torch.Tensor) -> None:
        """A clear error for a position id the embedding does not have (on the GPU without a host sync)."""
        if not pos.numel() or pos.is_meta:  # meta: the tests' shape-only passes carry no values
            return
        hint = f"n_positions={self.n_positions}; build the encoder with n_positions = 2 + P + R of the token layout"
        if pos.is_cuda:
            torch._assert_async(pos.max() < self.n_positions, f"a position id >= {hint}")
        elif int(pos.max()) >= self.n_positions:
            raise ValueError(f"position id {int(pos.max())} >= {hint}")

    @staticmethod
    def mask_content(feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked tokens get zero features (their type and position ids stay with the caller)."""
        return feat.masked_fill(mask[..., None], 0.0)

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
        """Encode a token batch.

        Args:
            feat, type_id, pos, valid: the token batch tensors (B, T, F) / (B, T).
            causal: block attention to later tokens.
            extra_block: optional (B, T, T) bool, True = additionally blocked (per sample); the diagonal is kept.
            return_layers: depths (0..depth) whose residual stream to return in ``layers``.
        """
        wanted = set(int(k) for k in return_layers)
        if any(k < 0 or k > self.depth for k in wanted):
            raise ValueError(f"return_layers {sorted(wanted)} outside 0..{self.depth}")
        z = self.embed(feat, type_id, pos)
        return run_blocks(self.blocks, self.norm, z, valid, causal=causal, extra_block=extra_block, wanted=wanted)

    def pool(
        self, out: EncoderOutput | torch.Tensor, batch: dict[str, torch.Tensor], how: str = "eos", prefix: str = ""
    ) -> torch.Tensor:
        """One vector per sample from the final hidden states (``pool_tokens``)."""
        return pool_tokens(out, batch, how, prefix)


def init_transformer(model: nn.Module) -> None:
    """Truncated-normal Linear/Embedding weights, zero biases, unit LayerNorms; then GPT-2's shrunken residual-branch
    outputs (``model.blocks``' proj and fc2), so the stream's variance does not grow with ``model.depth``."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.trunc_normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for block in model.blocks:
        for proj in (block.proj, block.fc2):
            nn.init.trunc_normal_(proj.weight, std=0.02 / math.sqrt(2 * model.depth))


def run_blocks(
    blocks: nn.ModuleList,
    norm: nn.LayerNorm,
    z: torch.Tensor,
    valid: torch.Tensor,
    *,
    causal: bool,
    extra_block: torch.Tensor | None = None,
    wanted: set[int] | frozenset[int] = frozenset(),
) -> EncoderOutput:
    """The pre-norm blocks over token embeddings ``z``, the final norm, and the residual streams at ``wanted``."""
    mask = attention_mask(valid.to(torch.bool), causal=causal, extra_block=extra_block)
    layers = {0: z} if 0 in wanted else {}
    x = z
    for k, block in enumerate(blocks, start=1):
        x = block(x, mask)
        if k in wanted:
            layers[k] = x
    return EncoderOutput(z=z, h=norm(x), layers=layers)


POOLS = ("eos", "mean", "max", "meanmax")


def pooled_dim(d_model: int, how: str) -> int:
    """Width of a pooled vector: ``meanmax`` concatenates two."""
    return 2 * d_model if how == "meanmax" else d_model


def pool_tokens(
    out: EncoderOutput | torch.Tensor, batch: dict[str, torch.Tensor], how: str = "eos", prefix: str = ""
) -> torch.Tensor:
    """One vector per sample (B, d) (meanmax: (B, 2d)) from the final hidden states.

    Args:
        out: the forward output (or the hidden states themselves).
        batch: the token batch (``type_id``, ``valid``; ``prefix`` selects e.g. the ``v2_`` view).
        how: "eos" = the last valid token (the EOS token when the tokenizer adds one; under causal attention
            it is the only token that has seen the whole sequence); "mean" / "max" = mean / max over valid content
            tokens; "meanmax" = both, concatenated (the Point-MAE family's fine-tune read-out).
    """
    h = out.h if isinstance(out, EncoderOutput) else out
    valid = batch[prefix + "valid"].to(torch.bool)
    if how == "eos":
        idx = torch.arange(valid.shape[1], device=valid.device)
        last = (valid.long() * idx).argmax(dim=1)  # padding sits at the end, so this is the last real token
        return h[torch.arange(h.shape[0], device=h.device), last]
    if how not in POOLS:
        raise ValueError(f"unknown pooling {how!r}; expected one of {POOLS}")
    keep = content_tokens(batch[prefix + "type_id"], valid)[..., None]
    mean = (h * keep.to(h.dtype)).sum(1) / keep.sum(1).clamp_min(1).to(h.dtype)
    if how == "mean":
        return mean
    peak = h.masked_fill(~keep, torch.finfo(h.dtype).min).amax(dim=1)
    peak = torch.where(keep.any(dim=1), peak, torch.zeros_like(peak))  # a sample without content: zeros, not -inf
    return peak if how == "max" else torch.cat([mean, peak], dim=1)


_SIZES: dict[str, dict[str, Any]] = {
    "query_nepa_tiny": dict(d_model=32, depth=2, heads=2),
    "query_nepa_small": dict(d_model=128, depth=4, heads=4),
    "query_nepa_base": dict(d_model=384, depth=8, heads=6),  # the reference size (~14.7M with the NEPA head)
}


register_family("query_nepa", QueryNepa, _SIZES)
