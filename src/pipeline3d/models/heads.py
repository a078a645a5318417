"""Small heads shared by the objectives: projection/decoder MLPs and the classification head."""

from __future__ import annotations

import torch
from torch import nn


class MLPHead(nn.Sequential):
    """Linear -> GELU -> Linear (``hidden_dim`` defaults to ``in_dim``): decoders, projectors, predictors.

    Args:
        in_dim: input width.
        out_dim: output width.
        hidden_dim: hidden width (default ``in_dim``).
        norm: LayerNorm after the hidden Linear (stabilises contrastive projectors).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, *, norm: bool = False) -> None:
        hidden = hidden_dim or in_dim
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
        if norm:
            layers.append(nn.LayerNorm(hidden))
        layers += [nn.GELU(), nn.Linear(hidden, out_dim)]
        super().__init__(*layers)


class ClassificationHead(nn.Module):
    """Pooled features (B, d) -> logits (B, n_classes): a Linear (the reference's probe), or an MLP when
    ``hidden_dim`` > 0, with optional dropout before the last layer."""

    def __init__(self, in_dim: int, n_classes: int, *, hidden_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classification head needs n_classes >= 2, got {n_classes}")
        body: list[nn.Module] = []
        if hidden_dim > 0:
            body += [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            in_dim = hidden_dim
        self.body = nn.Sequential(*body)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, n_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.body(pooled)))
