"""Pools -> one token sequence: sample, order, lay out (pure numpy; the dataset supplies the generator).

``pools`` is what a backend returns: ``pt_xyz`` (N,3) and ``pt_dist`` (N,), and when the backend has rays
``ray_o``, ``ray_d`` (M,3), ``ray_hit``, ``ray_t`` (M,), ``ray_n`` (M,3). ``pt_dist`` may instead be a callable
``dist_at(indices) -> float32 array`` (the voxel backend's lazy distances): it is asked only for the drawn points.

Sequences (slot contents and positions: ``pipeline3d.tokens.layout``):

* legacy: ``[BOS] + POINT × n_point + RAY × n_ray + [EOS]``
* Q/A:    ``[BOS] + (Q_POINT, A_POINT) × n_point + (Q_RAY, A_RAY) × n_ray + [EOS]``, each answer right after its
  query.

Points are drawn uniformly from the pool (without replacement when it holds at least ``n_point``), then sorted
along the Morton curve; rays likewise, sorted by direction (azimuth, then polar angle). Rays that are not there (a
backend without rays, ``n_ray = 0``, or the train-time ``drop_ray_prob`` coin) are simply not emitted: no padding
inside a sample, and the EOS keeps its fixed position. Draw order on the generator: point indices, then the ray
coin (train mode with drop_ray_prob > 0 and rays present), then ray indices.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from . import layout as L
from .layout import TokenConfig
from .ordering import morton_order, ray_direction_order

RAY_POOL_KEYS = ("ray_o", "ray_d", "ray_hit", "ray_t", "ray_n")


def sample_indices(pool_size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform indices into a pool: without replacement when the pool is large enough, else with."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if pool_size <= 0:
        raise ValueError(f"cannot draw {n} tokens from an empty pool")
    if pool_size >= n:
        return rng.choice(pool_size, size=n, replace=False)
    return rng.integers(0, pool_size, size=n)


def has_rays(pools: Mapping[str, Any]) -> bool:
    present = [k in pools for k in RAY_POOL_KEYS]
    if any(present) and not all(present):
        missing = [k for k, p in zip(RAY_POOL_KEYS, present) if not p]
        raise ValueError(f"pools hold some ray arrays but not {missing}")
    return all(present)


def tokenize(
    pools: Mapping[str, Any], cfg: TokenConfig | Mapping[str, Any], rng: np.random.Generator, *, train: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feat float32 (T,15), type_id int64 (T,), pos int64 (T,)) of one sample.

    ``train`` enables the ``drop_ray_prob`` coin (evaluation never drops rays).
    """
    cfg = TokenConfig.of(cfg)
    qa = cfg.qa_tokens
    per = cfg.tokens_per_point

    pt = sample_indices(len(pools["pt_xyz"]), cfg.n_point, rng)
    xyz = np.asarray(pools["pt_xyz"])[pt]
    order = morton_order(xyz)
    pt = pt[order]
    xyz = xyz[order]
    dist_of = pools["pt_dist"]
    dist = dist_of(pt) if callable(dist_of) else np.asarray(dist_of)[pt]

    n_ray = cfg.n_ray if has_rays(pools) else 0
    if n_ray and train and cfg.drop_ray_prob > 0.0 and rng.random() < cfg.drop_ray_prob:
        n_ray = 0
    ray = sample_indices(len(pools["ray_d"]), n_ray, rng) if n_ray else np.zeros(0, dtype=np.int64)
    if n_ray:
        ray = ray[ray_direction_order(np.asarray(pools["ray_d"])[ray])]

    n_pt_tok, n_ray_tok = per * cfg.n_point, per * n_ray
    T = 1 + n_pt_tok + n_ray_tok + int(cfg.add_eos)
    feat = np.zeros((T, L.FEAT_DIM), dtype=np.float32)
    type_id = np.empty(T, dtype=np.int64)
    pos = np.empty(T, dtype=np.int64)
    type_id[0], pos[0] = L.BOS, 0

    # point segment: tokens 1 .. n_pt_tok, positions 1 + j
    seg = slice(1, 1 + n_pt_tok)
    pos[seg] = np.arange(1, 1 + n_pt_tok)
    query, answer = (slice(1, 1 + n_pt_tok, 2), slice(2, 2 + n_pt_tok, 2)) if qa else (seg, seg)
    feat[query, L.XYZ] = xyz
    feat[answer, L.DIST] = dist
    type_id[query] = L.Q_POINT if qa else L.POINT
    if qa:
        type_id[answer] = L.A_POINT

    # ray segment: positions 1 + P + j, whatever the point segment holds
    if n_ray:
        start = 1 + n_pt_tok
        seg = slice(start, start + n_ray_tok)
        pos[seg] = np.arange(1 + cfg.point_segment, 1 + cfg.point_segment + n_ray_tok)
        if qa:
            query, answer = slice(start, start + n_ray_tok, 2), slice(start + 1, start + n_ray_tok, 2)
        else:
            query, answer = seg, seg
        o = np.asarray(pools["ray_o"])[ray]
        d = np.asarray(pools["ray_d"])[ray]
        hit = np.asarray(pools["ray_hit"])[ray].astype(np.float32)
        t = np.asarray(pools["ray_t"])[ray] * hit  # 0 on a miss, whatever the cache stored there
        feat[query, L.RAY_ORIGIN] = o
        feat[query, L.RAY_DIR] = d
        feat[answer, L.XYZ] = (o + t[:, None] * d) * hit[:, None]
        feat[answer, L.RAY_T] = t
        feat[answer, L.RAY_HIT] = hit
        feat[answer, L.RAY_NORMAL] = np.asarray(pools["ray_n"])[ray] * hit[:, None]
        type_id[query] = L.Q_RAY if qa else L.RAY
        if qa:
            type_id[answer] = L.A_RAY

    if cfg.add_eos:
        type_id[-1], pos[-1] = L.EOS, 1 + cfg.point_segment + cfg.ray_segment
    return feat, type_id, pos
