"""Token orders: points along a Morton (Z-order) curve, rays by the direction they look in.

Points: 10 bits per axis on (x + 1) / 2, interleaved x, y, z (x in the lowest bit), ascending; the same curve the
cache uses to order distance queries (``pipeline3d.data.cache.distances.morton_order``, reused, not copied).
Rays: azimuth atan2(d_y, d_x) as the primary key, polar angle acos(d_z) as the secondary key, ascending.
Both sorts are stable, so ties keep the draw order and the result is a pure function of the input.
"""

from __future__ import annotations

import numpy as np

from ..data.cache.distances import morton_order

__all__ = ["morton_order", "ray_direction_order"]


def ray_direction_order(dirs: np.ndarray) -> np.ndarray:
    """A permutation sorting unit directions (N,3) by (azimuth, polar angle)."""
    dirs = np.asarray(dirs, dtype=np.float64)
    azimuth = np.arctan2(dirs[:, 1], dirs[:, 0])
    polar = np.arccos(np.clip(dirs[:, 2], -1.0, 1.0))
    return np.lexsort((polar, azimuth))  # the last key is the primary one
