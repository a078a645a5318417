"""Training-draw augmentation: random scale and translation, rotation (about the up axis, or any rotation), jitter,
point dropout.

Draws come from the sample's own generator (keyed by seed, shape id, epoch and draw), so an augmented run is as
byte-reproducible as a plain one; evaluation draws are never augmented. Order of draws: scale, rotation (a
uniformly random one when ``rotate_any``, for shapes in arbitrary orientations; on SHREC'07, whose classes share
an orientation, it cost fine-tuning 0.3: BENCHMARKS.md; else the angle about the up axis when ``rotate_up``),
translation, jitter, dropout (each only when switched on).

- Point patches (``augment_points``): the field's fine-tune recipe: per-axis scale (isotropic when
  ``anisotropic`` is off), translation, rotation (about ``up_axis``, or any), Gaussian jitter clipped to
  ``jitter_clip``, and dropout of up to ``dropout`` of the points (replaced by the first point, as PointNet++
  does, so counts stay fixed).
  Normals rotate with the points (and are renormalised after an anisotropic scale).
- Query tokens (``augment_tokens``): the same similarity transform applied consistently to every slot of the 15-d
  layout: positions and ray origins move, directions and normals rotate, distances and depths scale. The scale is
  isotropic there (an anisotropic one would make the stored distances wrong); jitter and dropout do not apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from . import layout as L


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = False
    scale: tuple[float, float] = (0.8, 1.25)
    anisotropic: bool = True
    translate: float = 0.1
    rotate_up: bool = True
    rotate_any: bool = False
    up_axis: int = 1
    jitter_sigma: float = 0.01
    jitter_clip: float = 0.05
    dropout: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"augment.scale must be 0 < lo <= hi, got {self.scale}")
        if self.up_axis not in (0, 1, 2):
            raise ValueError(f"augment.up_axis must be 0, 1 or 2, got {self.up_axis}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"augment.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def of(cls, cfg: "AugmentConfig | Mapping[str, Any] | None") -> "AugmentConfig":
        if isinstance(cfg, AugmentConfig):
            return cfg
        cfg = dict(cfg or {})
        if "scale" in cfg:
            cfg["scale"] = tuple(float(v) for v in cfg["scale"])
        return cls(**cfg)


def rotation_about(axis: int, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` radians about coordinate axis ``axis``."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    rot = np.eye(3)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return rot


def uniform_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation drawn uniformly from SO(3): the unit quaternion of a 4-d standard normal draw."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rotation(cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    if cfg.rotate_any:
        return uniform_rotation(rng)
    return rotation_about(cfg.up_axis, rng.uniform(0.0, 2 * np.pi)) if cfg.rotate_up else np.eye(3)


def _similarity(
    cfg: AugmentConfig, rng: np.random.Generator, anisotropic: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scale (3,), rotation (3,3), translation (3,)) drawn in the documented order."""
    lo, hi = cfg.scale
    scale = rng.uniform(lo, hi, size=3) if anisotropic else np.full(3, rng.uniform(lo, hi))
    rot = _rotation(cfg, rng)
    shift = rng.uniform(-cfg.translate, cfg.translate, size=3) if cfg.translate > 0 else np.zeros(3)
    return scale, rot, shift


def augment_points(
    xyz: np.ndarray, normals: np.ndarray | None, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Augmented copies of (N,3) points and their normals (None stays None)."""
    if not cfg.enabled:
        return xyz, normals
    scale, rot, shift = _similarity(cfg, rng, cfg.anisotropic)
    out = (np.asarray(xyz, dtype=np.float64) * scale) @ rot.T + shift
    if normals is not None:
        n = (np.asarray(normals, dtype=np.float64) / scale) @ rot.T  # normals transform by the inverse transpose
        normals = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    if cfg.jitter_sigma > 0:
        out = out + np.clip(rng.normal(0.0, cfg.jitter_sigma, size=out.shape), -cfg.jitter_clip, cfg.jitter_clip)
    if cfg.dropout > 0:
        drop = rng.random(len(out)) < rng.uniform(0.0, cfg.dropout)
        drop[0] = False
        out[drop] = out[0]
        if normals is not None:
            normals[drop] = normals[0]
    return out, normals


def augment_tokens(feat: np.ndarray, type_id: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """The query-token features (T, 15) under one isotropic similarity transform (a new array)."""
    if not cfg.enabled:
        return feat
    scale, rot, shift = _similarity(cfg, rng, anisotropic=False)
    s = float(scale[0])
    out = feat.astype(np.float64)
    hit = out[:, L.RAY_HIT] > 0.5
    positions = np.isin(type_id, (L.POINT, L.Q_POINT)) | (np.isin(type_id, (L.RAY, L.A_RAY)) & hit)
    rays = np.isin(type_id, (L.RAY, L.Q_RAY))
    out[positions, L.XYZ] = (out[positions, L.XYZ] * s) @ rot.T + shift
    out[rays, L.RAY_ORIGIN] = (out[rays, L.RAY_ORIGIN] * s) @ rot.T + shift
    out[rays, L.RAY_DIR] = out[rays, L.RAY_DIR] @ rot.T
    out[:, L.RAY_NORMAL] = out[:, L.RAY_NORMAL] @ rot.T
    out[:, L.RAY_T] *= s
    out[:, L.DIST] *= s
    return out.astype(np.float32)
