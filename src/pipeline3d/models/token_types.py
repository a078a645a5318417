"""Token-type groups the encoder's pooling and the objectives select with (ids from ``pipeline3d.tokens.layout``)."""

from __future__ import annotations

import torch

from pipeline3d.tokens.layout import (
    A_POINT,
    A_RAY,
    ANSWER_TYPES,
    BOS,
    EOS,
    MISSING_RAY,
    N_TYPES,
    PAD,
    POINT,
    Q_POINT,
    Q_RAY,
    QUERY_TYPES,
    RAY,
)

SPECIAL = (BOS, EOS, PAD)  # carry no features: never masked, pooled or (BOS/PAD) predicted
ANSWERS = ANSWER_TYPES
QUERY_LIKE = QUERY_TYPES  # what the dual mask's type-aware mode may block

__all__ = [
    "ANSWERS",
    "A_POINT",
    "A_RAY",
    "BOS",
    "EOS",
    "MISSING_RAY",
    "N_TYPES",
    "PAD",
    "POINT",
    "QUERY_LIKE",
    "Q_POINT",
    "Q_RAY",
    "RAY",
    "SPECIAL",
    "content_tokens",
    "is_any",
]


def is_any(type_id: torch.Tensor, types: tuple[int, ...]) -> torch.Tensor:
    """Boolean tensor: ``type_id`` is one of ``types``."""
    return torch.isin(type_id, torch.tensor(types, device=type_id.device, dtype=type_id.dtype))


def content_tokens(type_id: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Valid tokens that carry features (not BOS/EOS/PAD)."""
    return valid & ~is_any(type_id, SPECIAL)
