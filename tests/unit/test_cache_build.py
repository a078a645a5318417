"""One shape -> one cache row: sampling, reproducibility, provenance, point-cloud items, bad shapes."""

import dataclasses

import numpy as np
import pytest
import trimesh

from pipeline3d.data.cache import CacheProfile, ShapeError, cache_mesh, cache_pointcloud
from pipeline3d.data.cache.distances import MeshDistance
from pipeline3d.data.cache.grids import trilinear
from pipeline3d.data.cache.pointcloud import estimate_normals
from pipeline3d.data.cache.sampling import SurfaceSampler, pool_sizes
from pipeline3d.data.cache.voxel_walk import dilate, voxelize
from pipeline3d.io.cache_schema import KIND_ARRAYS, array_spec

SMALL = CacheProfile(
    pc_points=256,
    pt_pool=500,
    pt_surface_ratio=0.5,
    pt_surface_sigma=0.02,
    n_views=4,
    rays_per_view=16,
    camera_radius=2.2,
    pc_grid=16,
    pc_dilate=1,
    df_grid=16,
    df_dilate=1,
    grid_mode="edt",
    band_voxels=2,
    voxel_pool_dist=False,
)


def torus(scale=1.0, shift=0.0):
    m = trimesh.creation.torus(major_radius=0.6, minor_radius=0.25, major_sections=20, minor_sections=10)
    return np.asarray(m.vertices, dtype=np.float64) * scale + shift, np.asarray(m.faces, dtype=np.int64)


def test_sampler_is_area_weighted_and_on_the_surface():
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    vertices, faces = np.asarray(box.vertices, dtype=np.float64), np.asarray(box.faces, dtype=np.int64)
    sampler = SurfaceSampler(vertices, faces)
    points, face = sampler.sample(200000, np.random.default_rng(0))
    area = np.asarray(box.area_faces)
    np.testing.assert_allclose(np.bincount(face, minlength=len(faces)) / len(face), area / area.sum(), atol=0.004)
    # on the plane of their face and inside it (distance to the mesh is 0)
    assert np.abs(((points - vertices[faces[face, 0]]) * sampler.face_normals[face]).sum(1)).max() < 1e-12
    assert MeshDistance(vertices, faces)(points).max() < 1e-9
    np.testing.assert_allclose(np.abs(sampler.face_normals).sum(1), 1.0)  # axis-aligned unit normals


def test_arrays_follow_the_schema_and_their_provenance():
    out = cache_mesh(*torus(), "ds/c/a", 0, SMALL)
    spec = dataclasses.asdict(SMALL)
    assert set(out) == set(KIND_ARRAYS["mesh"]) - {"pool_dist_voxel"}  # optional, off in this profile
    for key, value in out.items():
        assert (value.shape, value.dtype) == array_spec(key, spec), key
    n_uniform, _ = pool_sizes(SMALL.pt_pool, SMALL.pt_surface_ratio)
    assert np.abs(out["pool_xyz"]).max() <= 1.0
    assert np.linalg.norm(out["pc_xyz"], axis=1).max() <= 1.0 + 1e-6
    assert out["pool_dist_mesh"][n_uniform:].max() < 6 * SMALL.pt_surface_sigma  # the near-surface half
    # pc points lie on the mesh, so the distance to them bounds the mesh distance from above
    assert np.all(out["pool_dist_mesh"] <= out["pool_dist_pc"] + 1e-6)
    # the grid lookup is reproducible from the stored float16 grid alone
    np.testing.assert_allclose(
        out["pool_dist_grid"],
        trilinear(out["udf_grid"].astype(np.float32), out["pool_xyz"].astype(np.float64)),
        rtol=1e-6,
    )
    hit = out["ray_hit_mesh"].astype(bool)
    assert 0 < hit.mean() < 1 and np.all(out["ray_t_mesh"][~hit] == 0)
    assert np.all(np.abs(out["ray_t_mesh"][hit] - 2.2) < 1.0)
    assert np.all((out["ray_normal_mesh"][hit] * out["ray_dir"][hit]).sum(1) < 0)
    assert out["ray_hit_pc"].any() and np.all(out["ray_t_pc"][out["ray_hit_pc"] == 0] == 0)


def test_grid_sample_is_independent_of_the_point_cloud():
    out = cache_mesh(*torus(), "ds/c/a", 0, SMALL)
    pc_occupancy = dilate(voxelize(out["pc_xyz"].astype(np.float64), SMALL.df_grid), SMALL.df_dilate)
    assert not np.array_equal(out["occ_grid"].astype(bool), pc_occupancy)


def test_reproducible_per_shape_and_different_across_shapes():
    a = cache_mesh(*torus(), "ds/c/a", 7, SMALL)
    again = cache_mesh(*torus(), "ds/c/a", 7, SMALL)
    for key in a:
        np.testing.assert_array_equal(a[key], again[key], err_msg=key)
    other = cache_mesh(*torus(), "ds/c/b", 7, SMALL)
    other_seed = cache_mesh(*torus(), "ds/c/a", 8, SMALL)
    for key in ("pc_xyz", "pool_xyz", "ray_dir"):
        assert not np.array_equal(a[key], other[key]) and not np.array_equal(a[key], other_seed[key])
    np.testing.assert_array_equal(a["ray_origin"], other["ray_origin"])  # fixed camera layout


def test_normalisation_makes_the_row_independent_of_position_and_scale():
    a = cache_mesh(*torus(), "ds/c/a", 0, SMALL)
    b = cache_mesh(*torus(scale=3.0, shift=np.array([5.0, -2.0, 1.0])), "ds/c/a", 0, SMALL)
    for key in ("pc_xyz", "pool_xyz", "pool_dist_mesh", "ray_t_mesh"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, err_msg=key)


def test_one_count_does_not_shift_the_other_draws():
    a = cache_mesh(*torus(), "ds/c/a", 0, SMALL)
    b = cache_mesh(*torus(), "ds/c/a", 0, dataclasses.replace(SMALL, pt_pool=800))
    for key in ("pc_xyz", "ray_dir", "udf_grid", "ray_t_mesh"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    n_uniform, _ = pool_sizes(SMALL.pt_pool, SMALL.pt_surface_ratio)
    np.testing.assert_array_equal(a["pool_xyz"][:n_uniform], b["pool_xyz"][:n_uniform])


@pytest.mark.parametrize("mode", ["narrowband", "exact"])
def test_mesh_grid_modes_share_the_exact_near_field(mode):
    exact = cache_mesh(*torus(), "ds/c/a", 0, dataclasses.replace(SMALL, grid_mode="exact"))
    out = cache_mesh(*torus(), "ds/c/a", 0, dataclasses.replace(SMALL, grid_mode=mode))
    h = 2 / SMALL.df_grid
    near = exact["udf_grid"].astype(np.float64) <= SMALL.band_voxels * h
    np.testing.assert_array_equal(out["udf_grid"][near], exact["udf_grid"][near])
    np.testing.assert_array_equal(out["occ_grid"], exact["occ_grid"])
    assert exact["occ_grid"].any() and not exact["occ_grid"].all()


def test_point_cloud_items_have_no_mesh_arrays():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(900, 3))
    points = 0.5 * p / np.linalg.norm(p, axis=1, keepdims=True) + np.array([3.0, 0.0, 0.0])
    for mode in ("edt", "narrowband"):
        out = cache_pointcloud(points, "scan/c/0", 0, dataclasses.replace(SMALL, grid_mode=mode, voxel_pool_dist=True))
        assert set(out) == set(KIND_ARRAYS["pointcloud"])  # the optional pool_dist_voxel included
        assert not any(key.endswith("_mesh") for key in out)
    # normalised like a mesh (bbox centre, max norm) and normals pointing outward on a sphere
    assert abs(np.linalg.norm(out["pc_xyz"], axis=1).max() - 1.0) < 0.05
    pc = out["pc_xyz"].astype(np.float64)
    outward = (out["pc_normal"] * pc / np.linalg.norm(pc, axis=1, keepdims=True)).sum(1)
    assert np.median(outward) > 0.95 and outward.min() > 0.5
    assert out["ray_hit_pc"].any()
    # reproducible, and storing the optional array changes none of the others
    again = cache_pointcloud(points, "scan/c/0", 0, dataclasses.replace(SMALL, grid_mode="narrowband"))
    assert set(out) - set(again) == {"pool_dist_voxel"}
    for key in again:
        np.testing.assert_array_equal(out[key], again[key])


def test_pca_normals_on_a_plane():
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-1, 1, (300, 2)), np.full(300, 0.5)]
    normals = estimate_normals(pts)
    np.testing.assert_allclose(normals, np.tile([0.0, 0.0, 1.0], (300, 1)), atol=1e-9)  # outward: +z side


@pytest.mark.parametrize(
    "vertices,faces,reason",
    [
        (np.zeros((3, 3)), np.array([[0, 1, 2]]), "degenerate"),
        (np.eye(3), np.array([[0, 1, 3]]), "bad_index"),
        (np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]]), np.array([[0, 1, 2]]), "nonfinite"),
        (np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]]), np.array([[0, 1, 2]]), "degenerate"),
        (np.eye(3), np.zeros((0, 3), dtype=np.int64), "empty"),
        (np.eye(3) * 1e30, np.array([[0, 1, 2]]), "bad_scale"),
    ],
)
def test_bad_meshes_raise_shape_errors(vertices, faces, reason):
    with pytest.raises(ShapeError) as info:
        cache_mesh(vertices, faces, "ds/c/bad", 0, SMALL)
    assert info.value.reason == reason


def test_too_few_points():
    with pytest.raises(ShapeError) as info:
        cache_pointcloud(np.eye(3), "scan/c/1", 0, SMALL)
    assert info.value.reason == "too_few_points"
