"""Small heads shared by the objectives: projection/decoder MLPs, the classification head, and the metric-learning
heads (projection, BN neck, textual inversion)."""

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


class ProjectionHead(nn.Module):
    """MLP projector for metric learning / alignment: (N, in_dim) -> (N, out_dim), unit rows by default.

    ``layers`` Linear layers (1 = a single Linear); between them GELU and dropout. ``hidden`` defaults to
    ``in_dim``. With ``normalize=True`` the output is L2-normalised so cosine = dot product downstream.

    ``standardize=True`` centres the input on the training mean and scales it to unit RMS (one scale for all
    dimensions, so a dead dimension is not blown up), with the statistics set by ``fit_input`` and kept as buffers
    (saved and loaded with the weights). Frozen encoders' pooled features often share one dominant direction
    (mean-pooled tiny encoders: pairwise cosine ~0.9999), which leaves an MLP next to nothing to work with.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int | None = None,
        layers: int = 2,
        dropout: float = 0.0,
        normalize: bool = True,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.standardize = standardize
        if standardize:
            self.register_buffer("input_mean", torch.zeros(in_dim))
            self.register_buffer("input_scale", torch.ones(()))
        if layers < 1:
            raise ValueError(f"a projection head needs layers >= 1, got {layers}")
        hidden = hidden or in_dim
        widths = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        body: list[nn.Module] = []
        for i in range(layers):
            body.append(nn.Linear(widths[i], widths[i + 1]))
            if i < layers - 1:
                body += [nn.GELU(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*body)
        self.normalize = normalize

    @torch.no_grad()
    def fit_input(self, vectors) -> None:
        """Set the standardisation from the training inputs (N, in_dim): mean, and 1 / RMS of the centred rows."""
        if not self.standardize:
            raise ValueError("fit_input on a ProjectionHead built with standardize=False")
        x = torch.as_tensor(vectors, dtype=torch.float64)
        mean = x.mean(dim=0)
        rms = (x - mean).pow(2).sum(dim=1).mean().sqrt()
        self.input_mean.copy_(mean.to(self.input_mean.dtype))
        self.input_scale.fill_(float(1.0 / rms) if rms > 0 else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            x = (x - self.input_mean) * self.input_scale
        out = self.net(x)
        return torch.nn.functional.normalize(out, dim=-1) if self.normalize else out


class BNNeck(nn.Module):
    """BatchNorm neck (Luo et al. 2019, "Bag of tricks" re-ID): (N, dim) -> (feat_before, feat_after).

    Metric losses (triplet) use ``feat_before``; the classifier (ArcFace / CE) uses ``feat_after``, whose
    normalisation keeps the two losses from pulling the same features in conflicting directions. The BN bias
    (shift) is fixed at zero and not trained, so the classifier's features stay centred on the origin.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.bn(x)


class TextualInversion(nn.Module):
    """Maps a shape embedding to ``n_tokens`` pseudo-word embeddings for a text encoder (Pic2Word-style).

    (N, in_dim) -> MLP -> (N, n_tokens, token_dim); the caller splices them into a prompt template's token
    embeddings in place of a placeholder word. ``hidden`` defaults to max(in_dim, token_dim).
    """

    def __init__(
        self, in_dim: int, token_dim: int, n_tokens: int, *, hidden: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if n_tokens < 1:
            raise ValueError(f"textual inversion needs n_tokens >= 1, got {n_tokens}")
        hidden = hidden or max(in_dim, token_dim)
        self.n_tokens = n_tokens
        self.token_dim = token_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_tokens * token_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).reshape(x.shape[0], self.n_tokens, self.token_dim)
