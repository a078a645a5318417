"""PromptSG's multimodal interaction: a text prompt embedding picks what matters among one item's visual tokens.

The prompt embedding (one vector per item, from the frozen text tower) is projected to the token width and
cross-attends to the item's own tokens (query = prompt, keys/values = tokens; padding masked). The result is a
fused token that is put in front of the tokens, and ``layers`` pre-norm self-attention blocks run over
``[fused; tokens]``; the fused token's final state (after a LayerNorm) is the output. Everything is per item: no
attention crosses the batch, so an item's output depends on its own prompt and tokens only (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .query_nepa import Block, attention_mask


class PromptCrossAttention(nn.Module):
    """One query (the projected prompt) attending to an item's tokens: (B, D_text), (B, T, d) -> (B, d)."""

    def __init__(self, d_model: int, text_dim: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.heads = heads
        self.query = nn.Linear(text_dim, d_model)
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, prompt: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, T, D = tokens.shape
        q0 = self.query(prompt)  # (B, d): the residual stream of the fused token
        q = self.norm_q(q0).view(B, 1, self.heads, D // self.heads).transpose(1, 2)  # (B, H, 1, d_h)
        k, v = self.kv(self.norm_kv(tokens)).view(B, T, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        mask = valid[:, None, None, :]  # (B, 1, 1, T): True = may attend
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, 1, d_h)
        return q0 + self.proj(attn.transpose(1, 2).reshape(B, D))


class MultiModalInteraction(nn.Module):
    """Prompt-guided fusion of visual tokens: cross-attention, then ``layers`` self-attention blocks (PromptSG)."""

    def __init__(self, d_model: int, text_dim: int, *, heads: int = 8, layers: int = 3, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if layers < 0:
            raise ValueError(f"interaction layers must be >= 0, got {layers}")
        self.cross = PromptCrossAttention(d_model, text_dim, heads)
        self.blocks = nn.ModuleList([Block(d_model, heads, mlp_ratio) for _ in range(layers)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, prompt: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """prompt (B, text_dim), tokens (B, T, d), valid (B, T) bool (None: all valid) -> fused feature (B, d)."""
        if tokens.ndim != 3 or prompt.ndim != 2 or prompt.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"need prompt (B, D) and tokens (B, T, d); got {tuple(prompt.shape)} and {tuple(tokens.shape)}"
            )
        if valid is None:
            valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if not bool(valid.any(dim=1).all()):
            raise ValueError("every item needs at least one valid token to attend to")
        fused = self.cross(prompt, tokens, valid)
        x = torch.cat([fused[:, None], tokens], dim=1)
        seq_valid = torch.cat([valid.new_ones(valid.shape[0], 1), valid], dim=1)
        mask = attention_mask(seq_valid, causal=False)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x[:, 0])
