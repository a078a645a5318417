"""Synthetic token batches for the model/objective tests, built with the real tokenizer and collate.

The "shape" is a sphere (radius drawn per sample), so point distances and ray answers are functions of the
queries, as in real data. Pools: query points in [-1, 1]^3 with distance | |x| - r |; rays from a camera sphere
of radius 2 towards the origin, with hit flag, depth and normal. Pools go through ``pipeline3d.tokens.tokenize``
(Morton/direction ordering, fixed-segment positions) and ``pipeline3d.tokens.collate`` (PAD at the end). Every
draw comes from ``pipeline3d.rng.rng_for`` (no global state).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline3d.rng import rng_for
from pipeline3d.tokens import collate, tokenize
from pipeline3d.tokens.layout import n_positions as layout_positions


def sphere_pools(rng: np.random.Generator, n_pool: int = 64, with_rays: bool = True) -> dict[str, np.ndarray]:
    radius = rng.uniform(0.35, 0.65)
    xyz = rng.uniform(-1.0, 1.0, (n_pool, 3))
    pools = {
        "pt_xyz": xyz.astype(np.float32),
        "pt_dist": np.abs(np.linalg.norm(xyz, axis=1) - radius).astype(np.float32),
    }
    if not with_rays:
        return pools
    o = rng.normal(size=(n_pool, 3))
    o = 2.0 * o / np.linalg.norm(o, axis=1, keepdims=True)
    d = -o / 2.0 + rng.normal(scale=0.3, size=(n_pool, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    b = (o * d).sum(1)
    disc = b**2 - ((o * o).sum(1) - radius**2)
    hit = disc > 0
    t = np.where(hit, -b - np.sqrt(np.maximum(disc, 0.0)), 0.0)
    normal = (o + t[:, None] * d) / radius * hit[:, None]
    pools.update(
        ray_o=o.astype(np.float32),
        ray_d=d.astype(np.float32),
        ray_hit=hit.astype(np.uint8),
        ray_t=t.astype(np.float32),
        ray_n=normal.astype(np.float32),
    )
    return pools


def n_positions(n_point: int, n_ray: int, qa: bool = False) -> int:
    return layout_positions({"n_point": n_point, "n_ray": n_ray, "qa_tokens": qa})


def make_batch(
    batch_size: int = 4,
    n_point: int = 8,
    n_ray: int = 6,
    *,
    qa: bool = False,
    seed: int = 0,
    no_ray_samples: tuple[int, ...] = (),
    occ_grid: int = 0,
    two_views: bool = False,
    n_classes: int = 0,
) -> dict[str, torch.Tensor]:
    """A collated token batch; samples listed in ``no_ray_samples`` come from a ray-less backend (shorter, so the
    batch is padded). ``two_views`` adds an independent ``v2_`` draw of each shape; ``occ_grid`` a random
    (B, G^3) occupancy target; ``n_classes`` random labels (else -1)."""
    cfg = {"n_point": n_point, "n_ray": n_ray, "qa_tokens": qa}
    samples = []
    for b in range(batch_size):
        pools = sphere_pools(rng_for(seed, "synthetic-shape", f"s{b}"), with_rays=b not in no_ray_samples)
        feat, type_id, pos = tokenize(pools, cfg, rng_for(seed, "synthetic-tokens", f"s{b}"))
        sample = {"feat": feat, "type_id": type_id, "pos": pos, "shape_index": b}
        if two_views:
            feat, type_id, pos = tokenize(pools, cfg, rng_for(seed, "synthetic-tokens", f"s{b}|v2"))
            sample.update(v2_feat=feat, v2_type_id=type_id, v2_pos=pos)
        samples.append(sample)
    rng = rng_for(seed, "synthetic-labels")
    labels = rng.integers(0, n_classes, batch_size) if n_classes else np.full(batch_size, -1)
    for sample, label in zip(samples, labels):
        sample["label"] = int(label)
        if occ_grid:
            sample["occ_target"] = (rng.random(occ_grid**3) < 0.3).astype(np.float32)
    return collate(samples)
