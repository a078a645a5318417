"""Normalisation to the unit ball: bounding-box centre to the origin, then divide by the max vertex norm.

Meshes and point clouds use the same rule (bbox centre, not centroid), so the two primitives of one shape line up.
Everything stays float64; arrays are cast to their stored dtype only when the cache row is assembled.
"""

from __future__ import annotations

import numpy as np

from ...io.coords import scale_problem
from .errors import ShapeError


def normalize_points(points: np.ndarray) -> np.ndarray:
    """``points`` (N,3) moved so their bbox centre is the origin and scaled so the farthest one has norm 1."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ShapeError("empty", f"expected a non-empty (N,3) array, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ShapeError("nonfinite", f"{int((~np.isfinite(pts)).any(axis=1).sum())} points have NaN/inf coordinates")
    problem = scale_problem(pts)  # ingest refuses these; a cache built from other stores must too
    if problem:
        raise ShapeError("bad_scale", problem)
    centre = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
    centred = pts - centre
    scale = float(np.sqrt((centred * centred).sum(axis=1).max()))
    if not scale > 0:
        raise ShapeError("degenerate", "all points coincide (zero extent)")
    return centred / scale


def normalize_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a triangle mesh and return (normalised float64 vertices, int64 faces).

    Every stored vertex counts toward the bbox and the scale (ingest decides what a mesh contains).
    """
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ShapeError("empty", f"expected a non-empty (F,3) face array, got shape {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise ShapeError("bad_index", f"face indices have dtype {faces.dtype}, expected integers")
    vertices = normalize_points(vertices)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ShapeError(
            "bad_index", f"face indices span [{faces.min()}, {faces.max()}] but there are {len(vertices)} vertices"
        )
    return vertices, faces.astype(np.int64, copy=False)
