"""Backends: each sees exactly its primitive's arrays (never a forbidden one, even when asked), with the right
provenance; the voxel backend's trilinear EDT; point-cloud caches and pc-only unpaired stores."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.interpolate import RegularGridInterpolator

from pipeline3d.data.cache import cache_mesh
from pipeline3d.data.unpaired_store import materialize
from pipeline3d.io.cache_schema import ARRAYS, PRIMITIVE_ARRAYS
from pipeline3d.io.shards import ShardReader, ShardWriter
from pipeline3d.tokens import BACKENDS, get_backend
from tokens_fixtures import PROFILE, meshes, write_mesh_cache, write_pointcloud_shard

RAY_POOLS = {"ray_o", "ray_d", "ray_hit", "ray_t", "ray_n"}
PC_ONLY = ["pointcloud", "pointcloud_noray", "voxel"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    index, shards = write_mesh_cache(root)
    return root, index, shards


def full_row(path, row):
    with ShardReader(path, "all") as reader:
        return reader.read(row)


def materialised(pools):
    """Pools with a lazy ``pt_dist`` (the voxel backend's) evaluated over the whole pool."""
    dist = pools["pt_dist"]
    return {**pools, "pt_dist": dist(np.arange(len(pools["pt_xyz"]))) if callable(dist) else dist}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_refuses_every_forbidden_array(cache, name):
    _, _, shards = cache
    backend = get_backend(name)
    forbidden = [k for k in ARRAYS if k not in PRIMITIVE_ARRAYS[backend.primitive]]
    assert forbidden  # every primitive has something it must not see
    assert set(backend.keys(occ_grid=4)) <= set(PRIMITIVE_ARRAYS[backend.primitive])
    with backend.open(shards[1]) as reader:
        for key in forbidden:
            with pytest.raises(PermissionError, match=key):
                backend.read(reader, 0, [key])  # asking explicitly does not help
            with pytest.raises(PermissionError, match=key):
                reader.read(0, [key])  # nor going around the backend
    # nor handing it an unrestricted reader
    with ShardReader(shards[1], "all") as wide, pytest.raises(PermissionError, match="refuses a reader"):
        backend.pools(wide, 0)


@pytest.mark.parametrize("name", ["pointcloud", "pointcloud_noray", "voxel"])
def test_point_cloud_backends_never_read_mesh_arrays(cache, name):
    mesh_derived = {k for k, (_, _, prov) in ARRAYS.items() if prov == "mesh"}
    assert not set(get_backend(name).keys(occ_grid=8)) & mesh_derived


@pytest.mark.parametrize(
    "name, dist, rays",
    [
        ("mesh", "pool_dist_mesh", "mesh"),
        ("pointcloud", "pool_dist_pc", "pc"),
        ("pointcloud_noray", "pool_dist_pc", None),
        ("udfgrid", "pool_dist_grid", None),
    ],
)
def test_pools_come_from_the_backends_own_arrays(cache, name, dist, rays):
    _, _, shards = cache
    backend = get_backend(name)
    truth = full_row(shards[1], 2)
    with backend.open(shards[1]) as reader:
        pools = backend.pools(reader, 2)
    assert pools["pt_xyz"].dtype == np.float32 and pools["pt_dist"].dtype == np.float32
    np.testing.assert_array_equal(pools["pt_xyz"], truth["pool_xyz"])
    np.testing.assert_array_equal(pools["pt_dist"], truth[dist])
    if rays is None:
        assert not set(pools) & RAY_POOLS
        return
    np.testing.assert_array_equal(pools["ray_o"], truth["ray_origin"])
    np.testing.assert_array_equal(pools["ray_d"], truth["ray_dir"])
    for pool_key, cache_key in (("ray_hit", "ray_hit"), ("ray_t", "ray_t"), ("ray_n", "ray_normal")):
        np.testing.assert_array_equal(pools[pool_key], truth[f"{cache_key}_{rays}"])
    # the two ray sources really differ on these shapes, so the check above tells them apart
    assert not np.array_equal(truth["ray_t_mesh"], truth["ray_t_pc"])


def test_voxel_backend_is_a_trilinear_edt_of_the_point_occupancy_with_pc_rays(cache):
    _, _, shards = cache
    backend = get_backend("voxel")
    truth = full_row(shards[1], 0)
    with backend.open(shards[1]) as reader:
        pools = materialised(backend.pools(reader, 0))
    assert pools["pt_dist"].dtype == np.float32
    # independent reconstruction with scipy: voxelise pc_xyz, dilate (26-neighbourhood), EDT, trilinear at centres
    g, cell = PROFILE.pc_grid, 2.0 / PROFILE.pc_grid
    idx = np.clip(np.floor((truth["pc_xyz"].astype(np.float64) + 1) / cell), 0, g - 1).astype(int)
    occ = np.zeros((g,) * 3, dtype=bool)
    occ[tuple(idx.T)] = True
    occ = ndimage.binary_dilation(occ, structure=np.ones((3, 3, 3)), iterations=PROFILE.pc_dilate)
    udf = ndimage.distance_transform_edt(~occ, sampling=cell)
    centres = -1 + (np.arange(g) + 0.5) * cell
    lookup = RegularGridInterpolator((centres,) * 3, udf)
    queries = np.clip(truth["pool_xyz"].astype(np.float64), centres[0], centres[-1])
    np.testing.assert_allclose(pools["pt_dist"], lookup(queries), atol=1e-5)
    nearest = udf[tuple(np.clip(np.floor((truth["pool_xyz"] + 1) / cell), 0, g - 1).astype(int).T)]
    assert np.mean(np.abs(pools["pt_dist"] - nearest) > 1e-4) > 0.3  # not the reference's nearest-cell lookup
    for pool_key, cache_key in (("ray_hit", "ray_hit_pc"), ("ray_t", "ray_t_pc"), ("ray_n", "ray_normal_pc")):
        np.testing.assert_array_equal(pools[pool_key], truth[cache_key])


def test_stored_voxel_distances_are_read_instead_of_computed_with_the_same_bits(cache, tmp_path):
    _, _, shards = cache
    backend = get_backend("voxel")
    stored_profile = dataclasses.replace(PROFILE, voxel_pool_dist=True)
    shapes = meshes()
    sid = "ds/ring/torus"
    path = tmp_path / "stored.h5"
    with ShardWriter(path, dataset="ds", shard=0, n_shards=1, kind="mesh", profile=stored_profile.as_dict()) as writer:
        writer.append(sid, cache_mesh(*shapes[sid], sid, 0, stored_profile))
    with backend.open(path) as reader:
        keys = backend.keys(0, reader.allowed)
        assert "pool_dist_voxel" in keys and "pc_xyz" not in keys  # no recomputation input is even read
        stored = backend.pools(reader, 0)
    assert isinstance(stored["pt_dist"], np.ndarray)
    with backend.open(shards[1]) as reader:  # a cache without the array (torus hashes to shard 1): computed
        assert "pool_dist_voxel" not in reader.allowed
        lazy = backend.pools(reader, list(reader.shape_ids).index(sid))
    assert callable(lazy["pt_dist"])
    computed = materialised(lazy)
    np.testing.assert_array_equal(stored["pt_xyz"], computed["pt_xyz"])
    assert stored["pt_dist"].tobytes() == computed["pt_dist"].tobytes()


@pytest.mark.parametrize("name", ["mesh", "pointcloud", "voxel", "udfgrid"])
def test_occupancy_target_is_what_the_backend_sees(cache, name):
    _, _, shards = cache
    backend = get_backend(name)
    truth = full_row(shards[1], 1)
    with backend.open(shards[1]) as reader:
        occ = backend.occupancy(reader, 1, 4)
    assert occ.shape == (4, 4, 4) and occ.dtype == bool and 0 < occ.sum() < 64
    if name == "udfgrid":
        pooled = truth["occ_grid"].reshape(4, 4, 4, 4, 4, 4).max(axis=(1, 3, 5)) > 0  # 16^3 max-pooled to 4^3
        np.testing.assert_array_equal(occ, pooled)
    else:
        cells = np.clip(np.floor((truth["pc_xyz"] + 1) / 0.5), 0, 3).astype(int)
        expected = np.zeros((4, 4, 4), dtype=bool)
        expected[tuple(cells.T)] = True
        np.testing.assert_array_equal(occ, expected)


def test_pc_only_unpaired_store_serves_the_pc_backends(cache, tmp_path):
    root, index, shards = cache
    ids = pd.read_parquet(index)["shape_id"].tolist()
    table = pd.DataFrame(
        {"shape_id": ids, "label": 0, "split": ["train_pc", "train_pc", "train_mesh", "train_udf", "eval"]}
    )
    table["primitive"] = table["split"].map({"train_pc": "pc", "train_mesh": "mesh", "train_udf": "udf", "eval": "all"})
    table.to_parquet(tmp_path / "unpaired.parquet")
    store = tmp_path / "train_pc.h5"
    assert materialize("train_pc", tmp_path / "unpaired.parquet", index, shards, store, dataset="ds") == 2
    located = pd.read_parquet(index).set_index("shape_id")
    for row, sid in enumerate(sorted(ids[:2])):
        where = located.loc[sid]
        source = root / where["shard_file"]
        for name in PC_ONLY:
            backend = get_backend(name)
            with backend.open(store) as reader, backend.open(source) as full:
                assert reader.shape_ids[row] == sid
                got = materialised(backend.pools(reader, row))
                want = materialised(backend.pools(full, int(where["row"])))
                assert set(got) == set(want)
                for key in want:
                    np.testing.assert_array_equal(got[key], want[key])
                assert backend.occupancy(reader, row, 4).any()
    # the store physically lacks what the other primitives need: a clear error naming the file
    for name in ("mesh", "udfgrid"):
        backend = get_backend(name)
        with backend.open(store) as reader, pytest.raises(ValueError, match="train_pc.h5.*does not hold"):
            backend.pools(reader, 0)


def test_point_cloud_item_cache(tmp_path):
    path = tmp_path / "pc.h5"
    write_pointcloud_shard(path)
    for name in PC_ONLY + ["udfgrid"]:
        backend = get_backend(name)
        with backend.open(path) as reader:
            pools = materialised(backend.pools(reader, 1))
            assert len(pools["pt_xyz"]) == PROFILE.pt_pool and np.all(pools["pt_dist"] >= 0)
    with get_backend("mesh").open(path) as reader, pytest.raises(ValueError, match="pool_dist_mesh"):
        get_backend("mesh").pools(reader, 0)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'pointcloud_meshray'"):
        get_backend("pointcloud_meshray")
