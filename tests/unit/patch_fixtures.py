"""Synthetic point-patch batches and a tiny patch encoder for the model/objective tests."""

from __future__ import annotations

import numpy as np
import torch

from overfit import seeded
from pipeline3d.models import create_encoder
from pipeline3d.tokens.collate import collate
from pipeline3d.tokens.patches import PatchConfig, draw_points, patchify

CFG = PatchConfig(points=256, groups=16, group_size=8)


def cloud(seed: int, n: int = 512, kind: str = "sphere") -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, 3))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    if kind == "cube":
        p = p / np.abs(p).max(axis=1, keepdims=True)
    elif kind == "rod":
        p = p * np.array([1.0, 0.1, 0.1])
    return p


def patch_batch(n: int = 6, cfg: PatchConfig = CFG, seed: int = 0) -> dict[str, torch.Tensor]:
    samples = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        xyz, _ = draw_points(cloud(i, kind=("sphere", "cube", "rod")[i % 3]), None, cfg.points, rng)
        feat, type_id, pos = patchify(xyz, None, cfg, rng)
        samples.append({"feat": feat, "type_id": type_id, "pos": pos, "label": np.int64(i % 3)})
    return collate(samples)


def tiny_patch_encoder(cfg: PatchConfig = CFG):
    return seeded(0, lambda: create_encoder("point_patch_tiny", group_size=cfg.group_size, point_dim=cfg.point_dim))
