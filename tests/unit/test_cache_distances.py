"""Exact point-to-mesh distances (fcpw + float64 refinement) against a brute-force float64 reference."""

import numpy as np
import pytest
import trimesh

from pipeline3d.data.cache.distances import MeshDistance, morton_order, point_triangle_distance


def brute_force_distance(points: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """min over all triangles of the Ericson (region-based) closest-point distance, float64."""
    p = points[:, None, :]
    a, b, c = tri[None, :, 0], tri[None, :, 1], tri[None, :, 2]
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 1.0 / (va + vb + vc)
        inside = a + ab * (vb * denom)[..., None] + ac * (vc * denom)[..., None]
        on_ab = a + ab * (d1 / (d1 - d3))[..., None]
        on_ac = a + ac * (d2 / (d2 - d6))[..., None]
        w_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        on_bc = b + (c - b) * w_bc[..., None]
    conditions = [
        (d1 <= 0) & (d2 <= 0), (d3 >= 0) & (d4 <= d3), (vc <= 0) & (d1 >= 0) & (d3 <= 0),
        (d6 >= 0) & (d5 <= d6), (vb <= 0) & (d2 >= 0) & (d6 <= 0), (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),
    ]
    choices = [np.broadcast_to(x, inside.shape) for x in (a, b, on_ab, c, on_ac, on_bc)]
    closest = inside.copy()
    for cond, choice in zip(reversed(conditions), reversed(choices)):  # first matching region wins
        closest = np.where(cond[..., None], choice, closest)
    return np.linalg.norm(p - closest, axis=-1).min(axis=1)


def unit_mesh(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(mesh.vertices, dtype=np.float64)
    v = v - (v.max(0) + v.min(0)) / 2
    return v / np.linalg.norm(v, axis=1).max(), np.asarray(mesh.faces, dtype=np.int64)


MESHES = {
    "icosphere": lambda: trimesh.creation.icosphere(subdivisions=1),
    "box": lambda: trimesh.creation.box(extents=(1.0, 0.4, 0.7)),
    "torus": lambda: trimesh.creation.torus(major_radius=1.0, minor_radius=0.3, major_sections=12,
                                            minor_sections=8),
}


@pytest.mark.parametrize("name", sorted(MESHES))
def test_mesh_distance_is_exact(name):
    vertices, faces = unit_mesh(MESHES[name]())
    rng = np.random.default_rng(3)
    surface = vertices[faces[rng.integers(0, len(faces), 200)]].mean(axis=1)
    on_surface = np.concatenate([vertices[:8], surface[:20]])  # on vertices and on faces: distance 0
    queries = np.concatenate([rng.uniform(-1, 1, (300, 3)), surface + rng.normal(0, 0.02, (200, 3)), on_surface])
    got = MeshDistance(vertices, faces)(queries)
    want = brute_force_distance(queries, vertices[faces])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.all(got[-len(on_surface):] < 1e-6)


def test_upper_bounds_prune_but_never_change_the_answer():
    vertices, faces = unit_mesh(MESHES["torus"]())
    rng = np.random.default_rng(5)
    queries = rng.uniform(-1, 1, (400, 3))
    want = brute_force_distance(queries, vertices[faces])
    distance = MeshDistance(vertices, faces)
    np.testing.assert_allclose(distance(queries, upper=want), want, atol=1e-6)  # tight bounds
    np.testing.assert_allclose(distance(queries, upper=want * 2 + 0.1), want, atol=1e-6)  # loose bounds
    np.testing.assert_allclose(distance(queries, upper=want * 0.5), want, atol=1e-6)  # wrong bounds: re-asked


def test_point_triangle_distance_matches_reference_including_slivers():
    rng = np.random.default_rng(0)
    tri = rng.normal(size=(400, 3, 3))
    tri[:50, 2] = tri[:50, 0] + 1e-9 * rng.normal(size=(50, 3))  # near-degenerate slivers
    tri[50:60, 1] = tri[50:60, 0]  # exactly degenerate: the segment a-c
    p = rng.normal(size=(400, 3)) * 2
    got = point_triangle_distance(p, tri[:, 0], tri[:, 1], tri[:, 2])
    want = np.array([brute_force_distance(p[i:i + 1], tri[i:i + 1])[0] for i in range(len(p))])
    a, c = tri[50:60, 0], tri[50:60, 2]
    t = np.clip(((p[50:60] - a) * (c - a)).sum(1) / ((c - a) ** 2).sum(1), 0, 1)
    want[50:60] = np.linalg.norm(p[50:60] - (a + t[:, None] * (c - a)), axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_morton_order_is_a_spatially_coherent_permutation():
    rng = np.random.default_rng(1)
    points = rng.uniform(-1, 1, (5000, 3))
    order = morton_order(points)
    assert sorted(order.tolist()) == list(range(len(points)))
    # consecutive queries are close together, unlike the random input order
    step = np.linalg.norm(np.diff(points[order], axis=0), axis=1).mean()
    assert step < 0.25 * np.linalg.norm(np.diff(points, axis=0), axis=1).mean()
