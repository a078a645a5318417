"""Point patches (the Point-MAE / PointGPT / ReCon tokenization), pure numpy: surface points -> patch tokens.

One sample of a shape: ``points`` of its cached surface points (``pc_xyz``, and ``pc_normal`` where the config
asks for normals) drawn uniformly without replacement; in training draws the augmentation of
``pipeline3d.tokens.augment``; then ``groups`` centres by farthest point sampling (the first centre is a random
point of the draw), each centre's ``group_size`` nearest points (ties broken by point index), and the centres
ordered along the Morton curve (so a causal objective reads patches in a spatially coherent order, as PointGPT).

A patch token's features (``patch_feat_dim``): the group's points relative to its centre, flattened point-major
(``group_size`` x 3, or x 6 with the points' unit normals after the xyz), then the centre's xyz in the last 3
slots. The sequence is ``[BOS] + PATCH x groups + [EOS]`` (types BOS / POINT / EOS of the token layout, positions
0..T-1), so the collate, masks and objectives of the query tokens work unchanged; special tokens carry zeros.

Every random draw comes from the generator the dataset passes (keyed by seed, shape id, epoch and draw), in this
order: point subset, augmentation, first FPS centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .layout import BOS, EOS, POINT
from .ordering import morton_order

TOKEN_KINDS = ("query", "patch")


@dataclass(frozen=True)
class PatchConfig:
    """``tokens.patch``: points per draw, number of patches, points per patch, whether normals are features."""

    points: int = 1024
    groups: int = 64
    group_size: int = 32
    normals: bool = False
    add_eos: bool = True

    def __post_init__(self) -> None:
        if min(self.points, self.groups, self.group_size) < 1:
            raise ValueError(f"tokens.patch: points, groups and group_size must be >= 1 (got {self})")
        if self.groups > self.points or self.group_size > self.points:
            raise ValueError(
                f"tokens.patch: groups ({self.groups}) and group_size ({self.group_size}) must not "
                f"exceed points ({self.points})"
            )

    @classmethod
    def of(cls, cfg: "PatchConfig | Mapping[str, Any]") -> "PatchConfig":
        """From the ``tokens`` section (its ``patch`` block and ``add_eos``) or a PatchConfig."""
        if isinstance(cfg, PatchConfig):
            return cfg
        patch = dict(cfg.get("patch") or {})
        return cls(
            points=int(patch.get("points", 1024)),
            groups=int(patch.get("groups", 64)),
            group_size=int(patch.get("group_size", 32)),
            normals=bool(patch.get("normals", False)),
            add_eos=bool(cfg.get("add_eos", True)),
        )

    @property
    def point_dim(self) -> int:
        return 6 if self.normals else 3

    @property
    def feat_dim(self) -> int:
        """Features per token: the flattened patch, then the centre."""
        return self.group_size * self.point_dim + 3

    @property
    def n_tokens(self) -> int:
        return 1 + self.groups + int(self.add_eos)


def token_kind(tok_cfg: Mapping[str, Any]) -> str:
    kind = str(tok_cfg.get("kind", "query"))
    if kind not in TOKEN_KINDS:
        raise ValueError(f"tokens.kind must be one of {TOKEN_KINDS}, got {kind!r}")
    return kind


def farthest_point_sample(points: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """Indices of ``n`` points chosen greedily, each the farthest (squared Euclidean) from those already chosen.

    Starts at ``start``; ties go to the lowest index (``argmax``). One vectorised pass over the points per centre.
    """
    pts = np.asarray(points, dtype=np.float64)
    if not 1 <= n <= len(pts):
        raise ValueError(f"farthest point sampling: cannot pick {n} of {len(pts)} points")
    chosen = np.empty(n, dtype=np.int64)
    chosen[0] = start
    nearest = ((pts - pts[start]) ** 2).sum(axis=1)
    for i in range(1, n):
        chosen[i] = int(np.argmax(nearest))
        np.minimum(nearest, ((pts - pts[chosen[i]]) ** 2).sum(axis=1), out=nearest)
    return chosen


def knn_groups(points: np.ndarray, centres: np.ndarray, k: int) -> np.ndarray:
    """(G, k) indices of each centre's ``k`` nearest points, nearest first (ties: lower index first)."""
    pts = np.asarray(points, dtype=np.float64)
    ctr = np.asarray(centres, dtype=np.float64)
    d2 = ((ctr[:, None, :] - pts[None, :, :]) ** 2).sum(axis=2)  # (G, N), exact (no expansion round-off)
    if k < d2.shape[1]:
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        # argpartition cuts a tie at the k-th distance arbitrarily; rows with such a tie (duplicate points, e.g.
        # after point dropout) are redone with a stable sort, so ties go to the lower index
        kth = np.take_along_axis(d2, part, axis=1).max(axis=1, keepdims=True)
        tied = np.flatnonzero((d2 <= kth).sum(axis=1) != k)
        if len(tied):
            part[tied] = np.argsort(d2[tied], axis=1, kind="stable")[:, :k]
    else:
        part = np.broadcast_to(np.arange(d2.shape[1]), d2.shape).copy()
    order = np.lexsort((part, np.take_along_axis(d2, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def patchify(
    points: np.ndarray, normals: np.ndarray | None, cfg: PatchConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feat float32 (T, feat_dim), type_id int64 (T,), pos int64 (T,)) from already drawn (and augmented) points."""
    pts = np.asarray(points, dtype=np.float64)
    start = int(rng.integers(len(pts)))
    centre_idx = farthest_point_sample(pts, cfg.groups, start)
    centre_idx = centre_idx[morton_order(pts[centre_idx])]
    centres = pts[centre_idx]
    groups = knn_groups(pts, centres, cfg.group_size)
    rel = pts[groups] - centres[:, None, :]  # (G, k, 3)
    if cfg.normals:
        if normals is None:
            raise ValueError("tokens.patch.normals is on but no normals were given")
        rel = np.concatenate([rel, np.asarray(normals, dtype=np.float64)[groups]], axis=2)
    T = cfg.n_tokens
    feat = np.zeros((T, cfg.feat_dim), dtype=np.float32)
    feat[1 : 1 + cfg.groups, :-3] = rel.reshape(cfg.groups, -1)
    feat[1 : 1 + cfg.groups, -3:] = centres
    type_id = np.full(T, POINT, dtype=np.int64)
    type_id[0] = BOS
    if cfg.add_eos:
        type_id[-1] = EOS
    return feat, type_id, np.arange(T, dtype=np.int64)


def draw_points(
    xyz: np.ndarray, normals: np.ndarray | None, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` of the cached points (without replacement when there are enough), with their normals."""
    total = len(xyz)
    if total == 0:
        raise ValueError("cannot draw patch points from an empty point cloud")
    idx = rng.choice(total, size=n, replace=False) if total >= n else rng.integers(0, total, size=n)
    return np.asarray(xyz, dtype=np.float64)[idx], None if normals is None else np.asarray(normals)[idx]


def split_patch_feat(feat, cfg: PatchConfig):
    """(patch points (..., group_size, point_dim), centres (..., 3)) of a patch-token feature array or tensor."""
    return feat[..., :-3].reshape(*feat.shape[:-1], cfg.group_size, cfg.point_dim), feat[..., -3:]
