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
        tri = vertices[faces]
        self.origin = tri[:, 0]
        self.edge1 = tri[:, 1] - tri[:, 0]
        self.edge2 = tri[:, 2] - tri[:, 0]
        cross = np.cross(self.edge1, self.edge2)
        double_area = np.sqrt((cross * cross).sum(axis=1))
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


def query_pool(surface_points: np.ndarray, n_uniform: int, sigma: float, uniform_rng: np.random.Generator,
               jitter_rng: np.random.Generator) -> np.ndarray:
    """Uniform points in [-1,1]^3 followed by ``surface_points`` + N(0, sigma), all clipped to the cube."""
    uniform = uniform_rng.uniform(-1.0, 1.0, size=(n_uniform, 3))
    near = surface_points + jitter_rng.normal(0.0, sigma, size=surface_points.shape)
    return np.clip(np.concatenate([uniform, near]), -1.0, 1.0)
