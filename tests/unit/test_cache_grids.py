"""Grid semantics: EDT (reference), exact, narrowband (exact in the band, bounded outside), occupancy."""

import math

import numpy as np
import pytest
import trimesh
from scipy import ndimage

from pipeline3d.data.cache import grids
from pipeline3d.data.cache.distances import MeshDistance
from pipeline3d.data.cache.voxel_walk import dilate, voxelize


def torus():
    m = trimesh.creation.torus(major_radius=0.6, minor_radius=0.2, major_sections=24, minor_sections=12)
    return np.asarray(m.vertices, dtype=np.float64), np.asarray(m.faces, dtype=np.int64)


def test_edt_grid_is_distance_to_nearest_occupied_cell_centre():
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.6, 0.6, (40, 3))
    g = 12
    udf, occ = grids.edt_grid(points, g, 1)
    np.testing.assert_array_equal(occ, dilate(voxelize(points, g), 1))
    centres = grids.cell_centres(g)
    occupied = centres[occ.ravel()]
    brute = np.sqrt(((centres[:, None] - occupied[None]) ** 2).sum(-1)).min(1).reshape((g,) * 3)
    np.testing.assert_allclose(udf, brute, atol=1e-12)
    assert np.all(udf[occ] == 0) and np.all(udf[~occ] > 0)


@pytest.mark.parametrize(
    "shape,density", [((64, 64, 64), 0.002), ((9, 17, 5), 0.05), ((1, 30, 4), 0.1), ((12, 12, 12), 0.9)]
)
def test_squared_edt_matches_scipy_to_the_last_bit(shape, density):
    rng = np.random.default_rng(sum(shape))
    occ = rng.random(shape) < density
    occ.flat[rng.integers(occ.size)] = True
    want = ndimage.distance_transform_edt(~occ)
    np.testing.assert_array_equal(np.sqrt(grids.squared_edt(occ)), want)
    assert np.all(np.isinf(grids.squared_edt(np.zeros((3, 4, 5), dtype=bool))))


def test_exact_grid_and_occupancy_definition():
    vertices, faces = torus()
    distance = MeshDistance(vertices, faces)
    g = 16
    udf = grids.exact_grid(distance, g)
    np.testing.assert_allclose(udf.ravel(), distance(grids.cell_centres(g)))
    h = 2 / g
    occ = grids.occupancy_from_udf(udf, 0)
    np.testing.assert_array_equal(occ, udf <= math.sqrt(3) / 2 * h)  # the voxel's circumsphere meets the surface
    # every voxel containing a surface point is occupied (before dilation)
    sample = vertices[faces].mean(axis=1)
    assert np.all(occ[voxelize(sample, g)])
    np.testing.assert_array_equal(grids.occupancy_from_udf(udf, 1), dilate(occ, 1))


def test_narrowband_is_exact_in_the_band_and_bounded_outside():
    vertices, faces = torus()
    distance = MeshDistance(vertices, faces)
    g, band = 32, 2.0
    exact = grids.exact_grid(distance, g)
    approx, stats = grids.narrowband_grid(distance, g, band)
    h = 2 / g
    in_band = exact <= band * h
    np.testing.assert_array_equal(approx[in_band], exact[in_band])
    assert np.abs(approx - exact)[~in_band].max() <= grids.narrowband_bound(g)
    assert stats["exact_queries"] < 0.5 * g**3  # it really skips most of the grid
    np.testing.assert_array_equal(grids.occupancy_from_udf(approx, 1), grids.occupancy_from_udf(exact, 1))


def test_trilinear_conventions():
    rng = np.random.default_rng(1)
    coarse = rng.random((6, 6, 6))
    # exact at cell centres, clamped beyond the outer centres
    centres = grids.cell_centres(6)
    np.testing.assert_allclose(grids.trilinear(coarse, centres), coarse.ravel())
    np.testing.assert_allclose(grids.trilinear(coarse, np.array([[-1.0, -1.0, -1.0]])), coarse[0, 0, 0])
    # reproduces affine functions inside the lattice
    affine = (centres @ np.array([0.3, -1.2, 2.0]) + 0.5).reshape((6,) * 3)
    q = rng.uniform(-1 + 1 / 6, 1 - 1 / 6, (100, 3))
    np.testing.assert_allclose(grids.trilinear(affine, q), q @ np.array([0.3, -1.2, 2.0]) + 0.5)
    # the separable 2x upsampling is the same interpolation at the fine centres
    np.testing.assert_allclose(grids.upsample2(coarse).ravel(), grids.trilinear(coarse, grids.cell_centres(12)))


def test_child_lower_bounds_are_certified_and_use_the_face_neighbours():
    rng = np.random.default_rng(3)
    sites = rng.uniform(-1, 1, (5, 3))

    def f(x):  # a 1-Lipschitz function: distance to a few points
        return np.sqrt(((x[:, None] - sites[None]) ** 2).sum(-1)).min(1)

    n = 6
    parent = f(grids.cell_centres(n)).reshape((n,) * 3)
    lower = grids.child_lower_bounds(parent, 2 / (2 * n))
    child = f(grids.cell_centres(2 * n)).reshape((2 * n,) * 3)
    assert np.all(lower <= child + 1e-12)
    # brute force: max over the parent and its face neighbours on the child's side of (value - centre distance)
    pc, cc = grids.cell_centres(n).reshape((n,) * 3 + (3,)), grids.cell_centres(2 * n)
    for flat in rng.choice(len(cc), 40, replace=False):
        i = np.unravel_index(flat, (2 * n,) * 3)
        k = [a // 2 for a in i]
        cands = [tuple(k)]
        for axis in range(3):
            nb = list(k)
            nb[axis] += 1 if i[axis] % 2 else -1
            if 0 <= nb[axis] < n:
                cands.append(tuple(nb))
        want = max(parent[c] - np.linalg.norm(cc[flat] - pc[c]) for c in cands)
        assert abs(lower[i] - want) < 1e-12
