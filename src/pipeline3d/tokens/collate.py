"""Samples -> one batch of torch tensors, padded to the batch's longest sequence (not to a global maximum).

Padding tokens have type PAD, position 0, zero features and ``valid`` False. Each token set (the sample's and,
with two views, the ``v2_`` one) is padded to its own longest sequence. Per-sample scalars (shape_index, label,
draw, component) become int64 (B,) tensors; ``occ_target`` is stacked to (B, G^3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .layout import FEAT_DIM, PAD

SCALARS = ("shape_index", "label", "draw", "component")


def pad_tokens(
    feats: Sequence[np.ndarray], types: Sequence[np.ndarray], positions: Sequence[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(feat (B,T,F), type_id (B,T), pos (B,T), valid (B,T)) with T = the longest sequence (F: the samples' width)."""
    lengths = [len(t) for t in types]
    B, T = len(lengths), max(lengths, default=0)
    width = feats[0].shape[-1] if len(feats) else FEAT_DIM  # 15 for query tokens, the patch width for patches
    feat = np.zeros((B, T, width), dtype=np.float32)
    type_id = np.full((B, T), PAD, dtype=np.int64)
    pos = np.zeros((B, T), dtype=np.int64)
    valid = np.zeros((B, T), dtype=bool)
    for b, n in enumerate(lengths):
        feat[b, :n] = feats[b]
        type_id[b, :n] = types[b]
        pos[b, :n] = positions[b]
        valid[b, :n] = True
    return torch.from_numpy(feat), torch.from_numpy(type_id), torch.from_numpy(pos), torch.from_numpy(valid)


def collate(samples: list[dict]) -> dict[str, torch.Tensor]:
    if not samples:
        raise ValueError("collate: empty batch")
    batch: dict[str, torch.Tensor] = {}
    for prefix in ("", "v2_"):
        if f"{prefix}feat" not in samples[0]:
            continue
        feat, type_id, pos, valid = pad_tokens(
            [s[f"{prefix}feat"] for s in samples],
            [s[f"{prefix}type_id"] for s in samples],
            [s[f"{prefix}pos"] for s in samples],
        )
        batch.update({f"{prefix}feat": feat, f"{prefix}type_id": type_id, f"{prefix}pos": pos, f"{prefix}valid": valid})
    for key in SCALARS:
        if key in samples[0]:
            batch[key] = torch.tensor([int(s[key]) for s in samples], dtype=torch.int64)
    if "occ_target" in samples[0]:
        batch["occ_target"] = torch.from_numpy(np.stack([s["occ_target"] for s in samples]).astype(np.float32))
    return batch
