"""Point-cloud ray answers: occupancy voxels and a vectorised Amanatides–Woo walk over all rays at once.

``first_hits`` advances every live ray by one voxel per iteration (numpy over the ray axis, no per-ray Python
loop). A hit is the first occupied voxel; its t is the parameter at which the ray *entered* that voxel (as in
the reference DDA). Only the bounding box of the occupied voxels is walked: outside it every voxel is empty, so
the answer is unchanged and rays that miss the occupied region finish at once. Empty space is skipped by
``BRICK``^3 blocks (see ``first_hits``). The loop is bound by numpy call overhead (~40 iterations of a few hundred
live rays), so per-axis state is kept in (3, n) arrays and compacted with index takes (~3x faster than per-axis
lists and boolean masks, measured on SHREC'07: 14 -> 5 ms for 8000 rays at 64^3).
"""

from __future__ import annotations

import itertools

import numpy as np

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
    t_cur, t_out = t_in[ray], t_out[ray]
    # (3, n) arrays, one row per axis: each numpy call of the loop serves all three axes (the loop is bound by
    # per-call overhead, not by arithmetic). A boundary at voxel coordinate x is crossed at t = (x + c) * inv;
    # on an axis the ray is parallel to, c = 1e30 and inv = 1 put every crossing beyond t_out.
    p = p0[:, ray]
    dd = d[:, ray]
    moving = dd != 0
    sgn = np.sign(dd).astype(np.int64)
    down = (dd < 0).astype(np.int64)  # 1 when walking towards lower indices
    ahead = 1 - down
    inv = np.where(moving, 1.0 / np.where(moving, dd, 1.0), 1.0)
    c = np.where(moving, -p, 1e30)
    idx = np.clip(np.floor(p + t_cur * dd), box_lo[:, None], box_hi[:, None] - 1.0).astype(np.int64)

    padded = np.zeros((grid + 2,) * 3, dtype=bool)  # one empty voxel of margin: rounding never indexes outside
    padded[1:-1, 1:-1, 1:-1] = occ
    flat_occ = padded.ravel()
    voxel_strides = np.array([(grid + 2) ** 2, grid + 2, 1], dtype=np.int64)
    origin_shift = int(voxel_strides.sum())
    blocks = _brick_distance(occ, brick)
    flat_blocks = blocks.ravel()
    block_strides = np.array([blocks.shape[0] ** 2, blocks.shape[0], 1], dtype=np.int64)
    block_shift = int(block_strides.sum())
    shift = brick.bit_length() - 1 if brick & (brick - 1) == 0 else None

    alive = np.ones(len(ray), dtype=bool)
    while len(ray):
        found = flat_occ[voxel_strides @ idx + origin_shift]
        found &= alive
        if found.any():
            hit[ray[found]] = True
            t_hit[ray[found]] = t_cur[found]
            alive &= ~found
        b = (idx >> shift) if shift is not None else np.floor_divide(idx, brick)
        k = flat_blocks[block_strides @ b + block_shift]
        # Amanatides–Woo step: cross the nearest voxel boundary
        t_next = (idx + ahead + c) * inv
        t_step = _min3(t_next)
        stepped = idx + (t_next == t_step) * sgn
        jump = k > 0
        if jump.any():
            # empty block distance k: leave the empty cube of blocks [b - k + 1, b + k) along the ray
            bound = (b + sgn * k + down) * brick
            exit_t = (bound + c) * inv
            t_jump = _min3(exit_t)
            inside = np.floor(p + t_jump * dd).astype(np.int64)
            jumped = np.where(exit_t == t_jump, bound - down, inside)
            idx = np.where(jump, jumped, stepped)
            t_cur = np.where(jump, t_jump, t_step)
        else:
            idx = stepped
            t_cur = t_step
        # rays already finished may wander off: keep indices inside the padding
        np.minimum(np.maximum(idx, -1, out=idx), grid, out=idx)
        alive &= t_cur < t_out
        if alive.sum() < 0.75 * len(ray):
            keep = np.flatnonzero(alive)
            ray, t_cur, t_out = ray[keep], t_cur[keep], t_out[keep]
            alive = np.ones(len(keep), dtype=bool)
            p, dd, sgn, down, ahead, inv, c, idx = (a.take(keep, axis=1)
                                                    for a in (p, dd, sgn, down, ahead, inv, c, idx))
    return hit, t_hit
