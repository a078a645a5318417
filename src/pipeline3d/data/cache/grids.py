"""Occupancy / UDF grids on the ``G``^3 cell centres of [-1,1]^3 (value [i,j,k] at x_i, y_j, z_k).

Three modes (config ``cache.grid_mode``):

* ``edt``: the reference semantics. Occupancy = voxels holding a point of a surface sample drawn independently
  of ``pc_xyz``, dilated ``df_dilate`` times (26-neighbourhood); UDF = Euclidean distance transform of the empty
  cells, in world units: the distance from each cell centre to the nearest occupied cell centre, 0 inside.
* ``exact``: the exact distance to the mesh at every centre.
* ``narrowband``: exact wherever the distance is <= max(band_voxels, sqrt(3)/2) cells, so occupancy (and the
  whole near field) is exact; elsewhere the value is interpolated (see ``narrowband_grid`` for the bound).

For the mesh modes, occupancy = (udf <= sqrt(3)/2 * cell), i.e. the voxel's circumscribed sphere touches the
surface, dilated ``df_dilate`` times with the same 26-neighbourhood.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage

from .voxel_walk import dilate, voxelize

LO, HI = -1.0, 1.0
SQRT3 = math.sqrt(3.0)


def cell_size(grid: int) -> float:
    return (HI - LO) / grid


def cell_centres(grid: int) -> np.ndarray:
    """(grid^3, 3) centres in C order of the (i, j, k) index."""
    axis = LO + (np.arange(grid) + 0.5) * cell_size(grid)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def trilinear(grid: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of cell-centred values at ``points``; indices are clamped at the borders."""
    g = grid.shape[0]
    x = np.clip((points - LO) / cell_size(g) - 0.5, 0.0, g - 1.0)
    i0 = np.minimum(np.floor(x).astype(np.int64), max(g - 2, 0))
    f = x - i0
    i1 = np.minimum(i0 + 1, g - 1)
    values = np.asarray(grid, dtype=np.float64)
    out = np.zeros(len(points))
    for cx, wx in ((i0[:, 0], 1.0 - f[:, 0]), (i1[:, 0], f[:, 0])):
        for cy, wy in ((i0[:, 1], 1.0 - f[:, 1]), (i1[:, 1], f[:, 1])):
            wxy = wx * wy
            out += wxy * (1.0 - f[:, 2]) * values[cx, cy, i0[:, 2]] + wxy * f[:, 2] * values[cx, cy, i1[:, 2]]
    return out


def upsample2(grid: np.ndarray) -> np.ndarray:
    """Values at the centres of the 2x finer lattice, by trilinear interpolation with clamped borders.

    A fine centre lies a quarter of a coarse cell from its nearest coarse centre, so along each axis the value is
    0.75 * nearest + 0.25 * next (the border repeats itself): the separable form of ``trilinear``.
    """
    out = np.asarray(grid, dtype=np.float64)
    for axis in range(3):
        prev = np.concatenate([out.take([0], axis=axis), out.take(range(out.shape[axis] - 1), axis=axis)], axis=axis)
        nxt = np.concatenate([out.take(range(1, out.shape[axis]), axis=axis), out.take([-1], axis=axis)], axis=axis)
        lower = 0.75 * out + 0.25 * prev
        upper = 0.75 * out + 0.25 * nxt
        out = np.stack([lower, upper], axis=axis + 1).reshape(
            out.shape[:axis] + (2 * out.shape[axis],) + out.shape[axis + 1:])
    return out


def repeat2(grid: np.ndarray) -> np.ndarray:
    """Each value copied to the 2x2x2 children of its cell."""
    return grid.repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)


def edt_grid(points: np.ndarray, grid: int, dilations: int) -> tuple[np.ndarray, np.ndarray]:
    """(udf float64, occupancy bool): EDT of the empty cells of the dilated point occupancy."""
    occ = dilate(voxelize(points, grid), dilations)
    udf = ndimage.distance_transform_edt(~occ, sampling=cell_size(grid))
    return udf, occ


def occupancy_from_udf(udf: np.ndarray, dilations: int) -> np.ndarray:
    """Cells whose circumscribed sphere touches the surface, dilated ``dilations`` times (26-neighbourhood)."""
    return dilate(udf <= SQRT3 / 2.0 * cell_size(udf.shape[0]), dilations)


def exact_grid(distance: Callable[[np.ndarray], np.ndarray], grid: int) -> np.ndarray:
    return distance(cell_centres(grid)).reshape((grid,) * 3)


def narrowband_bound(grid: int) -> float:
    """Worst-case |narrowband - exact| outside the exact band, in world units (see ``narrowband_grid``)."""
    h = cell_size(grid)
    return 0.75 * (2.0 * h) + 0.75 * (4.0 * h)


def narrowband_grid(distance: Callable[[np.ndarray], np.ndarray], grid: int,
                    band_voxels: float) -> tuple[np.ndarray, dict]:
    """UDF exact within the band, interpolated outside; returns (udf float64, stats).

    Three levels: coarse (G/4, every centre exact), mid (G/2) and fine (G). The UDF is 1-Lipschitz, so an exact
    value at a parent centre minus the parent-to-child distance is a certified lower bound at the child. A mid
    cell is computed exactly when that bound could put any of its fine children inside the band; a fine cell
    when its own bound is <= the band. Every fine cell truly within the band is therefore exact. The rest take
    the trilinear interpolation of the mid level (itself exact where computed, interpolated from the coarse
    level elsewhere). Trilinear interpolation of a 1-Lipschitz function at a point a quarter cell from the
    nearest centre on every axis errs by at most 0.75 cell, so outside the band
    |narrowband - exact| <= 0.75 * (2h) + 0.75 * (4h) = 4.5 h (``narrowband_bound``); in practice far less, since
    the UDF is smooth away from the surface (measured in benchmarks/bench_cache.py).
    Grids not divisible by 4 are computed exactly.
    """
    h = cell_size(grid)
    if grid % 4:
        return exact_grid(distance, grid), {"exact_queries": grid ** 3}
    fine_threshold = max(band_voxels, SQRT3 / 2.0) * h
    mid_threshold = fine_threshold + SQRT3 / 2.0 * h  # fine centres sit sqrt(3)/2 h from their mid centre
    coarse = exact_grid(distance, grid // 4)
    queries = coarse.size

    mid_grid = grid // 2
    mid = upsample2(coarse)
    mid_lower = repeat2(coarse) - SQRT3 * h  # mid centres sit sqrt(3) h from their coarse centre
    need = mid_lower <= mid_threshold
    if need.any():
        mid[need] = distance(cell_centres(mid_grid)[need.ravel()])
        mid_lower[need] = mid[need]
        queries += int(need.sum())

    fine = upsample2(mid)
    fine_lower = repeat2(mid_lower) - SQRT3 / 2.0 * h
    need = fine_lower <= fine_threshold
    if need.any():
        fine[need] = distance(cell_centres(grid)[need.ravel()])
        queries += int(need.sum())
    return fine, {"exact_queries": queries, "band_cells": int(need.sum())}
