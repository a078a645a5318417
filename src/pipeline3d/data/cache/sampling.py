"""Area-weighted surface sampling (own numpy sampler: trimesh's ignores numpy seeds) and the query pool.

The sampler precomputes per-face edges, unit normals and the cumulative area once per mesh; each draw is then a
searchsorted plus a barycentric combination. Zero-area faces are never drawn (their CDF step is empty).
"""

from __future__ import annotations

import numpy as np

from .errors import ShapeError


class SurfaceSampler:
    """Uniform (area-weighted) points on a triangle mesh, with the face each point came from."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        # per-corner gathers and a component-wise cross product: the same arithmetic as vertices[faces] and
        # np.cross (so the same bits), ~2x cheaper on large meshes
        self.origin = vertices.take(faces[:, 0], axis=0)
        self.edge1 = vertices.take(faces[:, 1], axis=0) - self.origin
        self.edge2 = vertices.take(faces[:, 2], axis=0) - self.origin
        (ux, uy, uz), (vx, vy, vz) = self.edge1.T, self.edge2.T
        cx, cy, cz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
        double_area = np.sqrt(cx * cx + cy * cy + cz * cz)
        cross = np.stack([cx, cy, cz], axis=1)
        self.cdf = np.cumsum(double_area)
        self.total = float(self.cdf[-1])
        if not self.total > 0:
            raise ShapeError("degenerate", "every face has zero area")
        with np.errstate(invalid="ignore", divide="ignore"):
            # Face normals follow the winding (outward for a consistently oriented closed mesh); 0 for slivers.
            self.face_normals = np.where(double_area[:, None] > 0, cross / double_area[:, None], 0.0)
        self.area = self.total / 2.0

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points (float64 (n,3)) and their face indices (int64 (n,))."""
        face = np.searchsorted(self.cdf, rng.random(n) * self.total, side="right")
        np.minimum(face, len(self.cdf) - 1, out=face)
        uv = rng.random((n, 2))
        flip = uv.sum(axis=1) > 1.0  # fold the unit square onto the triangle: uniform barycentrics
        uv[flip] = 1.0 - uv[flip]
        points = self.origin[face] + uv[:, :1] * self.edge1[face] + uv[:, 1:] * self.edge2[face]
        return points, face


def pool_sizes(pt_pool: int, surface_ratio: float) -> tuple[int, int]:
    """(uniform, near-surface) counts: round((1 - ratio) * pool) uniform, the rest near the surface."""
    n_uniform = int(round((1.0 - surface_ratio) * pt_pool))
    return n_uniform, pt_pool - n_uniform


def query_pool(
    surface_points: np.ndarray,
    n_uniform: int,
    sigma: float,
    uniform_rng: np.random.Generator,
    jitter_rng: np.random.Generator,
) -> np.ndarray:
    """Uniform points in [-1,1]^3 followed by ``surface_points`` + N(0, sigma), all clipped to the cube."""
    uniform = uniform_rng.uniform(-1.0, 1.0, size=(n_uniform, 3))
    near = surface_points + jitter_rng.normal(0.0, sigma, size=surface_points.shape)
    return np.clip(np.concatenate([uniform, near]), -1.0, 1.0)
