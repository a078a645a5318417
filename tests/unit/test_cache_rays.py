"""Camera layout contract and first hits (our BVH, fcpw's, Embree's) against a brute-force Möller–Trumbore."""

import math

import numpy as np
import pytest
import trimesh

from pipeline3d.data.cache.distances import FcpwMeshDistance
from pipeline3d.data.cache.rays import EmbreeRayCaster, MeshRayCaster, camera_positions, camera_rays
from pipeline3d.data.cache.sampling import SurfaceSampler


def moller_trumbore(origins, dirs, tri):
    """(hit, t, face) of the first hit of each ray over all triangles, float64 brute force."""
    v0, v1, v2 = tri[None, :, 0], tri[None, :, 1], tri[None, :, 2]
    e1, e2 = v1 - v0, v2 - v0
    d = dirs[:, None, :]
    pvec = np.cross(d, e2)
    det = (e1 * pvec).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / det
        tvec = origins[:, None, :] - v0
        u = (tvec * pvec).sum(-1) * inv
        qvec = np.cross(tvec, e1)
        v = (d * qvec).sum(-1) * inv
        t = (e2 * qvec).sum(-1) * inv
    ok = (np.abs(det) > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    t = np.where(ok, t, np.inf)
    face = t.argmin(axis=1)
    t_min = t[np.arange(len(t)), face]
    hit = np.isfinite(t_min)
    return hit, np.where(hit, t_min, 0.0), face


def fcpw_caster(vertices, faces, normals):
    return MeshRayCaster(vertices, faces, normals, bvh=FcpwMeshDistance(vertices, faces))


@pytest.mark.parametrize("caster", [MeshRayCaster, fcpw_caster, EmbreeRayCaster])
def test_first_hits_match_brute_force(caster):
    mesh = trimesh.creation.torus(major_radius=0.6, minor_radius=0.25, major_sections=16, minor_sections=10)
    vertices, faces = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    normals = SurfaceSampler(vertices, faces).face_normals
    origins, dirs = camera_rays(6, 64, 2.2, np.random.default_rng(0))
    hit, t, normal = caster(vertices, faces, normals).cast(origins, dirs)
    want_hit, want_t, want_face = moller_trumbore(origins, dirs, vertices[faces])
    assert 0.2 < want_hit.mean() < 0.9  # the test exercises both hits and misses
    np.testing.assert_array_equal(hit.astype(bool), want_hit)
    np.testing.assert_allclose(t, want_t, rtol=0, atol=1e-9)
    h = want_hit
    # face normal of the hit triangle, turned towards the ray origin; exactly 0 on a miss
    np.testing.assert_allclose(np.abs((normal[h] * normals[want_face[h]]).sum(1)), 1.0, atol=1e-9)
    assert np.all((normal[h] * dirs[h]).sum(1) < 0)
    assert np.all(normal[~h] == 0) and np.all(t[~h] == 0)


def test_camera_layout_is_fixed_and_pixel_grid_is_as_contracted():
    n_views, per_view, radius = 5, 10, 2.5
    side = math.ceil(math.sqrt(per_view))  # 4: a 4x4 grid, first 10 pixels row-major
    o1, d1 = camera_rays(n_views, per_view, radius, np.random.default_rng(1))
    o2, d2 = camera_rays(n_views, per_view, radius, np.random.default_rng(2))
    np.testing.assert_array_equal(o1, o2)  # cameras identical for every shape; only the jitter differs
    assert not np.allclose(d1, d2)
    positions = camera_positions(n_views, radius)
    np.testing.assert_allclose(np.linalg.norm(positions, axis=1), radius)
    np.testing.assert_array_equal(o1, np.repeat(positions, per_view, axis=0))  # ray = view * per_view + pixel
    np.testing.assert_allclose(np.linalg.norm(d1, axis=1), 1.0)
    tan_half = math.tan(math.asin(1.0 / radius))
    for view in range(n_views):
        forward = -positions[view] / radius
        up0 = np.array([0.0, 0.0, 1.0]) if abs(forward[2]) <= 0.99 else np.array([0.0, 1.0, 0.0])
        right = np.cross(forward, up0)
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        for pixel in range(per_view):
            d = d1[view * per_view + pixel]
            x = (d @ right) / (d @ forward) / tan_half  # image-plane coordinates in [-1, 1]
            y = (d @ up) / (d @ forward) / tan_half
            col = (x + 1) / 2 * side
            row = (1 - y) / 2 * side
            assert int(col) == pixel % side and int(row) == pixel // side


def test_frustum_covers_the_unit_ball():
    origins, dirs = camera_rays(3, 400, 2.2, np.random.default_rng(0))
    # the ray closest to the frustum edge passes at distance ~1 from the origin, none much farther
    closest = np.linalg.norm(np.cross(origins, dirs), axis=1)
    assert closest.max() <= 1.0 * math.sqrt(2) + 1e-9 and closest.max() > 0.95
