"""Point-cloud ray answers: occupancy voxels and an Amanatides–Woo walk with empty-space skipping.

``first_hits`` walks each ray voxel by voxel (compiled with numba, one ray at a time). A hit is the first
occupied voxel; its t is the parameter at which the ray *entered* that voxel (as in the reference DDA). Only the
bounding box of the occupied voxels is walked: outside it every voxel is empty, so the answer is unchanged and
rays that miss the occupied region finish at once. Empty space is skipped by ``BRICK``^3 blocks (see
``first_hits``). The compiled walk does the same arithmetic as the former numpy version (all rays advanced one
step per numpy call), with bit-identical answers, in ~1/5 of its time (measured on SHREC'07, 8000 rays at 64^3:
~7 -> ~1.5 ms), because that loop was bound by per-call overhead.
"""

from __future__ import annotations

import itertools

import numpy as np
from numba import njit

LO, HI = -1.0, 1.0
BRICK = 2  # voxels per side of the blocks used to skip empty space (2 beats 4 and 8 by ~20% at 64^3, measured)
MAX_JUMP_BLOCKS = 8  # cap of the block distance (longer empty stretches take several jumps)


def voxel_index(points: np.ndarray, grid: int) -> np.ndarray:
    """Integer voxel coordinates (N,3) of points in [-1,1]^3 on a ``grid``^3 lattice (clamped at the border)."""
    cell = (HI - LO) / grid
    return np.clip(np.floor((points - LO) / cell), 0, grid - 1).astype(np.int64)


def voxelize(points: np.ndarray, grid: int) -> np.ndarray:
    """Boolean ``grid``^3 occupancy of the voxels containing at least one point."""
    occ = np.zeros((grid,) * 3, dtype=bool)
    idx = voxel_index(points, grid)
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return occ


def dilate(occ: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation with the full 3x3x3 cube (26-neighbourhood), ``iterations`` times.

    The cube is separable, so each iteration ORs neighbours along x, then y, then z (cheaper than
    ``scipy.ndimage.binary_dilation`` and identical to it with ``structure=np.ones((3,3,3))``).
    """
    out = occ.copy()
    for _ in range(iterations):
        for axis in range(3):
            src = out.copy()
            lead = [slice(None)] * 3
            trail = [slice(None)] * 3
            lead[axis], trail[axis] = slice(1, None), slice(None, -1)
            out[tuple(lead)] |= src[tuple(trail)]
            out[tuple(trail)] |= src[tuple(lead)]
    return out


def _box_interval(p0: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab test in voxel coordinates: (t_in >= 0, t_out) per ray; t_in >= t_out means the box is missed."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo[:, None] - p0) / d
        t2 = (hi[:, None] - p0) / d
    near = np.fmin(t1, t2)
    far = np.fmax(t1, t2)
    parallel = d == 0  # a ray parallel to a slab is inside it for all t, or never
    inside = (p0 >= lo[:, None]) & (p0 <= hi[:, None])
    near = np.where(parallel, np.where(inside, -np.inf, np.inf), near)
    far = np.where(parallel, np.where(inside, np.inf, -np.inf), far)
    return np.maximum(np.maximum(np.maximum(near[0], near[1]), near[2]), 0.0), _min3(far)


def _brick_distance(occ: np.ndarray, brick: int, cap: int = MAX_JUMP_BLOCKS) -> np.ndarray:
    """Chebyshev distance, in bricks, from each ``brick``^3 block to the nearest block holding an occupied voxel,
    capped at ``cap``, padded by one block of 0 on each side (so out-of-range rays fall back to plain voxel steps).

    Grown one 26-neighbour dilation at a time (each ring of blocks at distance k is the dilation of the ring
    k - 1): at these sizes ~5x cheaper than ``ndimage.distance_transform_cdt``. A capped distance is still a
    valid jump (the smaller empty cube is empty too); beyond the cap the walk just jumps more than once.
    """
    grid = occ.shape[0]
    n_blocks = -(-grid // brick)
    full = np.zeros((n_blocks * brick,) * 3, dtype=bool)
    full[:grid, :grid, :grid] = occ
    # a block is occupied if any of its voxels is: OR of the brick^3 strided views (a multi-axis .any() on the
    # 6-D reshape is ~15x slower)
    covered = full[::brick, ::brick, ::brick].copy()
    for i, j, k in itertools.product(range(brick), repeat=3):
        covered |= full[i::brick, j::brick, k::brick]
    padded = np.zeros((n_blocks + 2,) * 3, dtype=np.int64)
    inner = padded[1:-1, 1:-1, 1:-1]
    inner[~covered] = cap
    for k in range(1, cap):
        grown = dilate(covered, 1)
        ring = grown & ~covered
        if not ring.any():
            break
        inner[ring] = k
        covered = grown
    return padded


def _min3(rows: np.ndarray) -> np.ndarray:
    """Minimum over the 3 rows of a (3, n) array (two elementwise calls beat a .min(axis=0) reduction)."""
    return np.minimum(np.minimum(rows[0], rows[1]), rows[2])


@njit(cache=True, nogil=True, error_model="numpy")
def _walk(
    p0: np.ndarray,
    d: np.ndarray,
    t_in: np.ndarray,
    t_out: np.ndarray,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    padded: np.ndarray,
    blocks: np.ndarray,
    brick: int,
    found_t: np.ndarray,
) -> None:
    """The walk of ``first_hits``, one ray at a time (voxel coordinates: row a of ``p0``/``d`` is axis a).

    ``padded`` is the occupancy with one empty voxel of margin, ``blocks`` the padded block distances of
    ``_brick_distance``. Writes the entry t of the first occupied voxel into ``found_t`` (left as is on a miss).
    """
    grid = padded.shape[0] - 2
    idx = np.empty(3, np.int64)
    sgn = np.empty(3, np.int64)
    down = np.empty(3, np.int64)
    inv = np.empty(3)
    c = np.empty(3)
    t_next = np.empty(3)
    b = np.empty(3, np.int64)
    bound = np.empty(3, np.int64)
    for r in range(p0.shape[1]):
        t_cur = t_in[r]
        for a in range(3):
            # a boundary at voxel coordinate x is crossed at t = (x + c) * inv; on an axis the ray is parallel
            # to, c = 1e30 and inv = 1 put every crossing beyond t_out
            dd = d[a, r]
            moving = dd != 0.0
            sgn[a] = 1 if dd > 0.0 else (-1 if dd < 0.0 else 0)
            down[a] = 1 if dd < 0.0 else 0
            inv[a] = 1.0 / dd if moving else 1.0
            c[a] = -p0[a, r] if moving else 1e30
            idx[a] = int(min(max(np.floor(p0[a, r] + t_cur * dd), box_lo[a]), box_hi[a] - 1.0))
        while True:
            if padded[idx[0] + 1, idx[1] + 1, idx[2] + 1]:
                found_t[r] = t_cur
                break
            for a in range(3):
                b[a] = idx[a] // brick  # floor division, as numpy's (also for the margin index -1)
                t_next[a] = (idx[a] + 1 - down[a] + c[a]) * inv[a]
            k = blocks[b[0] + 1, b[1] + 1, b[2] + 1]
            t_step = min(min(t_next[0], t_next[1]), t_next[2])
            if k > 0:
                # empty block distance k: leave the empty cube of blocks [b - k + 1, b + k) along the ray
                for a in range(3):
                    bound[a] = (b[a] + sgn[a] * k + down[a]) * brick
                    t_next[a] = (bound[a] + c[a]) * inv[a]
                t_jump = min(min(t_next[0], t_next[1]), t_next[2])
                for a in range(3):
                    if t_next[a] == t_jump:
                        idx[a] = bound[a] - down[a]
                    else:
                        idx[a] = int(np.floor(p0[a, r] + t_jump * d[a, r]))
                t_cur = t_jump
            else:  # Amanatides–Woo step: cross the nearest voxel boundary (several at once on a tie)
                for a in range(3):
                    if t_next[a] == t_step:
                        idx[a] += sgn[a]
                t_cur = t_step
            for a in range(3):  # rays about to finish may wander off: keep indices inside the padding
                idx[a] = min(max(idx[a], -1), grid)
            if not t_cur < t_out[r]:
                break


def first_hits(
    origins: np.ndarray, dirs: np.ndarray, occ: np.ndarray, brick: int = BRICK
) -> tuple[np.ndarray, np.ndarray]:
    """(hit bool (R,), t float64 (R,), 0 on a miss) of rays against a boolean occupancy over [-1,1]^3.

    ``dirs`` must be unit vectors, so t is a distance in world units. Each iteration moves every live ray
    either one voxel (Amanatides–Woo step) or, when it is in a block whose Chebyshev block distance k to any
    occupied block is >= 1, straight to the exit of the empty cube of (2k-1)^3 blocks around it: every voxel
    skipped is empty, so the first occupied voxel and its entry parameter are exactly those of the plain walk.
    """
    n_rays = len(origins)
    grid = occ.shape[0]
    cell = (HI - LO) / grid
    hit = np.zeros(n_rays, dtype=bool)
    t_hit = np.zeros(n_rays)
    if n_rays == 0 or not occ.any():
        return hit, t_hit
    # bounding box of the occupied voxels, from the occupancy projected on each axis
    spans = [np.flatnonzero(occ.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    box_lo = np.array([span[0] for span in spans], dtype=np.float64)
    box_hi = np.array([span[-1] for span in spans], dtype=np.float64) + 1.0

    # voxel coordinates: p(t) = p0 + t * d with t in world units
    p0 = ((origins - LO) / cell).T
    d = (dirs / cell).T
    t_in, t_out = _box_interval(p0, d, box_lo, box_hi)
    ray = np.flatnonzero(t_in < t_out)
    padded = np.zeros((grid + 2,) * 3, dtype=np.bool_)  # one empty voxel of margin: rounding never indexes outside
    padded[1:-1, 1:-1, 1:-1] = occ
    blocks = _brick_distance(occ, brick)
    found_t = np.full(len(ray), np.nan)
    _walk(
        np.ascontiguousarray(p0[:, ray]),
        np.ascontiguousarray(d[:, ray]),
        t_in[ray],
        t_out[ray],
        box_lo,
        box_hi,
        padded,
        blocks,
        brick,
        found_t,
    )
    found = ~np.isnan(found_t)
    hit[ray[found]] = True
    t_hit[ray[found]] = found_t[found]
    return hit, t_hit
