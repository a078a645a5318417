"""Point-cloud ray answers: occupancy voxels and a vectorised Amanatides–Woo walk over all rays at once.

``first_hits`` advances every live ray by one voxel per iteration (numpy over the ray axis, no per-ray Python
loop). A hit is the first occupied voxel; its t is the parameter at which the ray *entered* that voxel (as in
the reference DDA). Only the bounding box of the occupied voxels is walked: outside it every voxel is empty, so
the answer is unchanged and rays that miss the occupied region finish at once.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

LO, HI = -1.0, 1.0
BRICK = 4  # voxels per side of the blocks used to skip empty space


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
    return np.maximum(near.max(axis=0), 0.0), far.min(axis=0)


def _brick_distance(occ: np.ndarray, brick: int) -> np.ndarray:
    """Chebyshev distance, in bricks, from each ``brick``^3 block to the nearest block holding an occupied voxel,
    padded by one block of 0 on each side (so out-of-range rays fall back to plain voxel steps)."""
    grid = occ.shape[0]
    n_blocks = -(-grid // brick)
    full = np.zeros((n_blocks * brick,) * 3, dtype=bool)
    full[:grid, :grid, :grid] = occ
    blocks = full.reshape(n_blocks, brick, n_blocks, brick, n_blocks, brick).any(axis=(1, 3, 5))
    dist = ndimage.distance_transform_cdt(~blocks, metric="chessboard")
    padded = np.zeros((n_blocks + 2,) * 3, dtype=np.int64)
    padded[1:-1, 1:-1, 1:-1] = dist
    return padded


def first_hits(origins: np.ndarray, dirs: np.ndarray, occ: np.ndarray,
               brick: int = BRICK) -> tuple[np.ndarray, np.ndarray]:
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
    occupied = np.argwhere(occ)
    if n_rays == 0 or len(occupied) == 0:
        return hit, t_hit
    box_lo = occupied.min(axis=0).astype(np.float64)
    box_hi = occupied.max(axis=0).astype(np.float64) + 1.0

    # voxel coordinates: p(t) = p0 + t * d with t in world units
    p0 = ((origins - LO) / cell).T
    d = (dirs / cell).T
    t_in, t_out = _box_interval(p0, d, box_lo, box_hi)
    ray = np.flatnonzero(t_in < t_out)
    t_cur, t_out = t_in[ray], t_out[ray]
    # Per-axis 1-D arrays (contiguous, cheap to compact). A boundary at voxel coordinate x is crossed at
    # t = (x + c) * inv; on an axis the ray is parallel to, c = 1e30 and inv = 1 put every crossing beyond t_out.
    p = [p0[a, ray].copy() for a in range(3)]
    dd = [d[a, ray].copy() for a in range(3)]
    moving = [v != 0 for v in dd]
    sgn = [np.sign(v).astype(np.int64) for v in dd]
    down = [(v < 0).astype(np.int64) for v in dd]  # 1 when walking towards lower indices
    inv = [np.where(m, 1.0 / np.where(m, v, 1.0), 1.0) for m, v in zip(moving, dd)]
    c = [np.where(m, -pa, 1e30) for m, pa in zip(moving, p)]
    idx = [np.clip(np.floor(p[a] + t_cur * dd[a]), box_lo[a], box_hi[a] - 1.0).astype(np.int64) for a in range(3)]

    padded = np.zeros((grid + 2,) * 3, dtype=bool)  # one empty voxel of margin: rounding never indexes outside
    padded[1:-1, 1:-1, 1:-1] = occ
    flat_occ = padded.ravel()
    s0, s1 = (grid + 2) ** 2, grid + 2
    origin_shift = s0 + s1 + 1
    blocks = _brick_distance(occ, brick)
    flat_blocks = blocks.ravel()
    b0, b1 = blocks.shape[0] ** 2, blocks.shape[0]
    block_shift = b0 + b1 + 1
    shift = brick.bit_length() - 1 if brick & (brick - 1) == 0 else None

    alive = np.ones(len(ray), dtype=bool)
    while len(ray):
        found = flat_occ[idx[0] * s0 + idx[1] * s1 + idx[2] + origin_shift]
        found &= alive
        if found.any():
            hit[ray[found]] = True
            t_hit[ray[found]] = t_cur[found]
            alive &= ~found
        b = [(i >> shift) if shift is not None else np.floor_divide(i, brick) for i in idx]
        k = flat_blocks[b[0] * b0 + b[1] * b1 + b[2] + block_shift]
        # Amanatides–Woo step: cross the nearest voxel boundary
        t_next = [(idx[a] + 1 - down[a] + c[a]) * inv[a] for a in range(3)]
        t_step = np.minimum(np.minimum(t_next[0], t_next[1]), t_next[2])
        stepped = [idx[a] + (t_next[a] == t_step) * sgn[a] for a in range(3)]
        jump = k > 0
        if jump.any():
            # empty block distance k: leave the empty cube of blocks [b - k + 1, b + k) along the ray
            bound = [(b[a] + sgn[a] * k + down[a]) * brick for a in range(3)]
            exit_t = [(bound[a] + c[a]) * inv[a] for a in range(3)]
            t_jump = np.minimum(np.minimum(exit_t[0], exit_t[1]), exit_t[2])
            for a in range(3):
                inside = np.floor(p[a] + t_jump * dd[a]).astype(np.int64)
                jumped = np.where(exit_t[a] == t_jump, bound[a] - down[a], inside)
                idx[a] = np.where(jump, jumped, stepped[a])
            t_cur = np.where(jump, t_jump, t_step)
        else:
            idx = stepped
            t_cur = t_step
        for a in range(3):  # rays already finished may wander off: keep every index inside the padded arrays
            np.clip(idx[a], -1, grid, out=idx[a])
        alive &= t_cur < t_out
        if alive.sum() < 0.75 * len(ray):
            keep = alive
            ray, t_cur, t_out, alive = ray[keep], t_cur[keep], t_out[keep], alive[keep]
            for group in (p, dd, sgn, down, inv, c, idx):
                for a in range(3):
                    group[a] = group[a][keep]
    return hit, t_hit
