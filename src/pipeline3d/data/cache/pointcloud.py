"""Point-cloud items: resampling to a fixed count and normals estimated from the points alone."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

NORMAL_NEIGHBOURS = 16


def resample(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points drawn from ``points``: without replacement when there are enough, else with replacement."""
    index = rng.choice(len(points), size=n, replace=len(points) < n)
    return points[index]


def estimate_normals(points: np.ndarray, tree: cKDTree | None = None, k: int = NORMAL_NEIGHBOURS) -> np.ndarray:
    """Unit normals by PCA of the ``k`` nearest neighbours, oriented outward (away from the centroid).

    The normal is the eigenvector of the smallest eigenvalue of the neighbourhood covariance. Orientation by the
    centroid is a heuristic (exact for star-shaped surfaces); points at the centroid keep the PCA sign.
    """
    k = min(k, len(points))
    tree = tree if tree is not None else cKDTree(points)
    _, neighbours = tree.query(points, k=k, workers=1)
    neighbours = neighbours.reshape(len(points), k)
    local = points[neighbours]
    local = local - local.mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", local, local)
    _, vectors = np.linalg.eigh(cov)  # eigenvalues ascending
    normals = vectors[:, :, 0]
    outward = points - points.mean(axis=0)
    flip = np.einsum("ij,ij->i", normals, outward) < 0
    normals[flip] *= -1.0
    return normals
