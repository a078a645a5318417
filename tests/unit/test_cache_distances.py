"""Exact point-to-mesh distances (our numba BVH, and the fcpw reference engine) and nearest points against
brute-force float64 references."""

from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from pipeline3d.data.cache.bvh import PointTree, TriangleBVH
from pipeline3d.data.cache.distances import (
    FcpwMeshDistance,
    MeshDistance,
    NearestPoint,
    morton_order,
    point_triangle_distance,
)

SHREC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "shrec07_watertight"


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
        (d1 <= 0) & (d2 <= 0),
        (d3 >= 0) & (d4 <= d3),
        (vc <= 0) & (d1 >= 0) & (d3 <= 0),
        (d6 >= 0) & (d5 <= d6),
        (vb <= 0) & (d2 >= 0) & (d6 <= 0),
        (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),
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
    "torus": lambda: trimesh.creation.torus(major_radius=1.0, minor_radius=0.3, major_sections=12, minor_sections=8),
}


@pytest.mark.parametrize("engine", [MeshDistance, FcpwMeshDistance])
@pytest.mark.parametrize("name", sorted(MESHES))
def test_mesh_distance_is_exact(name, engine):
    vertices, faces = unit_mesh(MESHES[name]())
    rng = np.random.default_rng(3)
    surface = vertices[faces[rng.integers(0, len(faces), 200)]].mean(axis=1)
    on_surface = np.concatenate([vertices[:8], surface[:20]])  # on vertices and on faces: distance 0
    queries = np.concatenate([rng.uniform(-1, 1, (300, 3)), surface + rng.normal(0, 0.02, (200, 3)), on_surface])
    got = engine(vertices, faces)(queries)
    want = brute_force_distance(queries, vertices[faces])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.all(got[-len(on_surface) :] < 1e-6)


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
    want = np.array([brute_force_distance(p[i : i + 1], tri[i : i + 1])[0] for i in range(len(p))])
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


def min_over_faces(queries: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance, face) by brute force over every face with ``point_triangle_distance`` (robust to slivers)."""
    a, b, c = (np.repeat(vertices[faces[:, k]][None], len(queries), 0).reshape(-1, 3) for k in range(3))
    d = point_triangle_distance(np.repeat(queries, len(faces), 0), a, b, c).reshape(len(queries), len(faces))
    return d.min(1), d.argmin(1)


def test_bvh_is_exact_with_degenerate_and_duplicate_triangles():
    vertices, faces = unit_mesh(MESHES["icosphere"]())
    n = len(vertices)
    rng = np.random.default_rng(7)
    extra = rng.uniform(-0.5, 0.5, (4, 3))
    vertices = np.concatenate([vertices, extra, [extra[0] * 0.5 + extra[1] * 0.5]])
    faces = np.concatenate(
        [
            faces,
            [
                [n, n, n + 1],  # two corners equal: a segment
                [n, n + 1, n + 4],  # collinear: a segment with a mid vertex
                [n + 2, n + 2, n + 2],  # a point
                [n + 3, n + 1, n + 2],
                [n + 3, n + 1, n + 2],
            ],
        ]
    )  # the same triangle twice
    queries = np.concatenate([rng.uniform(-1, 1, (300, 3)), extra + rng.normal(0, 0.01, (4, 3)), extra])
    want, _ = min_over_faces(queries, vertices, faces)
    got, face = TriangleBVH(vertices, faces).closest(queries)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # the face returned is a closest one, and the distance is that face's
    corners = vertices[faces[face]]
    np.testing.assert_allclose(point_triangle_distance(queries, *corners.transpose(1, 0, 2)), got, atol=1e-12)
    assert np.all(got[-4:] < 1e-12)


def test_bvh_tree_holds_every_face_once_in_boxes_that_contain_it():
    vertices, faces = unit_mesh(MESHES["torus"]())
    bvh = TriangleBVH(vertices, faces, leaf_size=2)
    nodes, links, order = bvh._nodes, bvh._links, bvh._order
    assert sorted(order.tolist()) == list(range(len(faces)))
    leaves = links[:, 0] < 0
    assert (-links[leaves, 0]).sum() == len(faces) and np.all(-links[leaves, 0] <= 2)
    tri = vertices[faces[order]]  # leaf order
    for k in np.flatnonzero(leaves):
        start, count = links[k, 1], -links[k, 0]
        corners = tri[start : start + count].reshape(-1, 3)
        assert np.all(corners >= nodes[k, :3]) and np.all(corners <= nodes[k, 3:])
    for k in np.flatnonzero(~leaves):
        for child in (links[k, 0], links[k, 0] + 1):
            assert np.all(nodes[child, :3] >= nodes[k, :3]) and np.all(nodes[child, 3:] <= nodes[k, 3:])
    assert bvh.depth < 2 * np.log2(len(faces))


def test_bvh_rejects_bad_input():
    vertices, faces = unit_mesh(MESHES["box"]())
    with pytest.raises(Exception, match="non-finite"):
        TriangleBVH(np.where(np.arange(len(vertices))[:, None] == 0, np.nan, vertices), faces)
    with pytest.raises(Exception, match="indices"):
        TriangleBVH(vertices, faces + len(vertices))
    with pytest.raises(Exception, match="no triangles"):
        TriangleBVH(vertices, np.zeros((0, 3), dtype=np.int64))


def test_bvh_ray_hits_match_brute_force_from_inside_and_along_axes():
    vertices, faces = unit_mesh(MESHES["icosphere"]())
    rng = np.random.default_rng(11)
    origins = np.concatenate([rng.uniform(-0.4, 0.4, (100, 3)), rng.uniform(-3, 3, (200, 3))])
    dirs = np.concatenate([rng.normal(size=(100, 3)), rng.uniform(-1.2, 1.2, (200, 3)) - origins[100:]])
    dirs *= rng.uniform(0.5, 2.0, (300, 1))  # not unit length: t is in units of dirs
    dirs[:30, 1:] = 0.0  # from the inside along x
    origins[100:140] = np.column_stack([rng.uniform(-0.9, 0.9, (40, 2)), np.full(40, -3.0)])
    dirs[100:140] = [0.0, 0.0, 1.0]  # from outside along z
    face, t = TriangleBVH(vertices, faces).first_hits(origins, dirs)
    tri = vertices[faces]
    want_t = np.full(len(origins), np.inf)
    for i in range(len(origins)):  # brute-force Möller–Trumbore over all triangles, one ray at a time
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        p = np.cross(dirs[i], e2)
        det = (e1 * p).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = origins[i] - tri[:, 0]
            u = (s * p).sum(1) / det
            q = np.cross(s, e1)
            v = (q * dirs[i]).sum(1) / det
            tt = (q * e2).sum(1) / det
            ok = (det != 0) & (u >= 0) & (v >= 0) & (u + v <= 1) & (tt >= 0)
        want_t[i] = tt[ok].min() if ok.any() else np.inf
    hit = np.isfinite(want_t)
    assert 0.5 < hit.mean() < 0.95 and hit[:100].all()  # every ray from the inside hits the closed sphere
    np.testing.assert_array_equal(face >= 0, hit)
    np.testing.assert_allclose(t[hit], want_t[hit], rtol=0, atol=1e-12)
    assert np.all(np.isinf(t[~hit]))


def test_nearest_point_is_exact_including_duplicates():
    rng = np.random.default_rng(2)
    points = np.concatenate([rng.normal(size=(700, 3)), rng.normal(size=(5, 3)).repeat(4, 0)])
    queries = np.concatenate([rng.uniform(-2, 2, (1500, 3)), points[::7]])
    want, _ = cKDTree(points).query(queries)
    for engine in (PointTree(points, leaf_size=3), NearestPoint(points)):
        got, index = engine.query(queries)
        np.testing.assert_array_equal(got, want)  # the same float64 arithmetic: bit-identical
        np.testing.assert_array_equal(np.linalg.norm(queries - points[index], axis=1), got)
    assert NearestPoint(points).query(np.zeros((0, 3)))[0].shape == (0,)
    one, index = PointTree(points[:1]).query(queries[:3])
    assert np.all(index == 0) and np.allclose(one, np.linalg.norm(queries[:3] - points[0], axis=1))


@pytest.mark.skipif(not SHREC.is_dir(), reason="shared SHREC'07 data not available")
def test_bvh_matches_fcpw_and_brute_force_on_a_real_mesh():
    from pipeline3d.data.cache.normalize import normalize_mesh
    from pipeline3d.io.meshes import load_mesh

    path = sorted(SHREC.glob("bearing/*/*.off"))[0]
    mesh = load_mesh(path.read_bytes(), "off", 10_000_000)
    vertices, faces = normalize_mesh(mesh.vertices, mesh.faces)
    rng = np.random.default_rng(4)
    near = vertices[faces[rng.integers(0, len(faces), 1000)]].mean(1) + rng.normal(0, 0.02, (1000, 3))
    queries = np.concatenate([rng.uniform(-1, 1, (1000, 3)), near])
    got = MeshDistance(vertices, faces)(queries)
    reference = FcpwMeshDistance(vertices, faces)(queries)
    # fcpw selects the triangle in float32, so it may pick one a few 1e-8 farther; never a closer one
    assert np.all(got <= reference + 1e-12) and np.abs(got - reference).max() < 1e-6
    few = queries[::50]
    np.testing.assert_allclose(got[::50], min_over_faces(few, vertices, faces)[0], rtol=0, atol=1e-12)
