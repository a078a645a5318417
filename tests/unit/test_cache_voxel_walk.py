"""The vectorised voxel walk against a plain per-ray Amanatides–Woo, and the occupancy helpers."""

import math

import numpy as np
import pytest
from scipy import ndimage

from pipeline3d.data.cache.voxel_walk import dilate, first_hits, voxelize


def reference_walk(o, d, occ):
    """One ray, one voxel per step over the whole [-1,1]^3 grid (classic tMax += tDelta formulation)."""
    g = occ.shape[0]
    h = 2.0 / g
    t_in, t_out = 0.0, math.inf
    for a in range(3):
        if d[a] == 0:
            if not -1 <= o[a] <= 1:
                return False, 0.0
        else:
            t1, t2 = (-1 - o[a]) / d[a], (1 - o[a]) / d[a]
            t_in, t_out = max(t_in, min(t1, t2)), min(t_out, max(t1, t2))
    if t_in >= t_out:
        return False, 0.0
    idx = [min(max(int(math.floor((o[a] + t_in * d[a] + 1) / h)), 0), g - 1) for a in range(3)]
    step, t_max, t_delta = [0] * 3, [math.inf] * 3, [math.inf] * 3
    for a in range(3):
        if d[a] != 0:
            step[a] = 1 if d[a] > 0 else -1
            boundary = -1 + (idx[a] + (d[a] > 0)) * h
            t_max[a], t_delta[a] = (boundary - o[a]) / d[a], h / abs(d[a])
    t = t_in
    while True:
        if occ[idx[0], idx[1], idx[2]]:
            return True, t
        a = min(range(3), key=lambda k: t_max[k])
        t = t_max[a]
        idx[a] += step[a]
        t_max[a] += t_delta[a]
        if not 0 <= idx[a] < g or t >= t_out:
            return False, 0.0


def random_rays(rng, n):
    origins = rng.uniform(-3, 3, (n, 3))
    dirs = rng.uniform(-1, 1, (n, 3)) - origins
    origins[: n // 10] = rng.uniform(-0.9, 0.9, (n // 10, 3))  # some start inside the grid
    dirs[n // 10 : n // 10 + 20, 0] = 0.0  # some are parallel to a slab
    return origins, dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


@pytest.mark.parametrize("brick", [2, 3, 4])  # the default, the non-power-of-two path, the former default
@pytest.mark.parametrize("grid,density", [(8, 0.3), (16, 0.05), (16, 0.01), (32, 0.002), (20, 0.004)])
def test_walk_matches_per_ray_reference(grid, density, brick):
    rng = np.random.default_rng(grid * 1000 + int(density * 1e4))
    occ = rng.random((grid,) * 3) < density  # sparse grids make the walk skip empty blocks
    origins, dirs = random_rays(rng, 400)
    hit, t = first_hits(origins, dirs, occ, brick=brick)
    want = [reference_walk(origins[i], dirs[i], occ) for i in range(len(origins))]
    want_hit = np.array([w[0] for w in want])
    assert 0.05 < want_hit.mean() < 0.95
    np.testing.assert_array_equal(hit, want_hit)
    np.testing.assert_allclose(t, [w[1] for w in want], rtol=0, atol=1e-9)


def test_walk_on_a_shell_matches_reference_and_hits_at_voxel_entry():
    rng = np.random.default_rng(7)
    p = rng.normal(size=(3000, 3))
    occ = dilate(voxelize(0.7 * p / np.linalg.norm(p, axis=1, keepdims=True), 32), 1)
    origins, dirs = random_rays(rng, 300)
    hit, t = first_hits(origins, dirs, occ)
    want = [reference_walk(origins[i], dirs[i], occ) for i in range(len(origins))]
    np.testing.assert_array_equal(hit, [w[0] for w in want])
    np.testing.assert_allclose(t, [w[1] for w in want], rtol=0, atol=1e-9)
    # the hit point is on the boundary of an occupied voxel, as it is the voxel's entry point
    x = (origins[hit] + t[hit, None] * dirs[hit] + 1) / (2 / 32)
    assert np.all(np.min(np.abs(x - np.round(x)), axis=1)[t[hit] > 0] < 1e-6)


def test_empty_grid_and_no_rays():
    hit, t = first_hits(np.zeros((3, 3)) + 2, -np.ones((3, 3)) / math.sqrt(3), np.zeros((8, 8, 8), bool))
    assert not hit.any() and not t.any()
    hit, t = first_hits(np.zeros((0, 3)), np.zeros((0, 3)), np.ones((8, 8, 8), bool))
    assert hit.shape == (0,)


def test_dilate_is_the_26_neighbourhood_binary_dilation():
    rng = np.random.default_rng(0)
    occ = rng.random((12, 12, 12)) < 0.02
    for iterations in (0, 1, 2):
        want = ndimage.binary_dilation(occ, np.ones((3, 3, 3), bool), iterations=iterations) if iterations else occ
        np.testing.assert_array_equal(dilate(occ, iterations), want)


def test_voxelize_marks_the_containing_cells():
    occ = voxelize(np.array([[-1.0, -1.0, -1.0], [0.99, 0.0, 0.3], [1.0, 1.0, 1.0]]), 4)
    assert occ.sum() == 3 and occ[0, 0, 0] and occ[3, 2, 2] and occ[3, 3, 3]


@pytest.mark.parametrize("brick,cap", [(2, 8), (3, 4), (4, 50)])
def test_block_distance_is_the_capped_chessboard_distance(brick, cap):
    from scipy import ndimage

    from pipeline3d.data.cache.voxel_walk import _brick_distance

    rng = np.random.default_rng(brick)
    occ = rng.random((20, 20, 20)) < 0.001
    occ[3, 4, 5] = True
    n = -(-20 // brick)
    full = np.zeros((n * brick,) * 3, bool)
    full[:20, :20, :20] = occ
    blocks = full.reshape(n, brick, n, brick, n, brick).any(axis=(1, 3, 5))
    want = np.minimum(ndimage.distance_transform_cdt(~blocks, metric="chessboard"), cap)
    got = _brick_distance(occ, brick, cap)
    np.testing.assert_array_equal(got[1:-1, 1:-1, 1:-1], want)
    assert got[0].sum() == got[-1].sum() == got[:, 0].sum() == got[:, :, -1].sum() == 0  # the padding
