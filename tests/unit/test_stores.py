"""Item store and cache shard formats: round trips, atomicity, validation, primitive access control."""

import h5py
import numpy as np
import pytest

from pipeline3d.io.cache_schema import PRIMITIVE_ARRAYS, array_spec, kind_arrays
from pipeline3d.io.itemstore import ItemStore, ItemStoreWriter
from pipeline3d.io.shards import ShardReader, ShardWriter, quarantine, shard_of, validate_shard

EXPECTED_FIRST_SHARDS = [3, 1, 0, 0, 2]

PROFILE = {
    "pc_points": 8,
    "pt_pool": 6,
    "pt_surface_ratio": 0.5,
    "pt_surface_sigma": 0.02,
    "n_views": 2,
    "rays_per_view": 4,
    "camera_radius": 2.2,
    "pc_grid": 4,
    "pc_dilate": 1,
    "df_grid": 4,
    "df_dilate": 1,
    "grid_mode": "edt",
    "band_voxels": 3,
    "voxel_pool_dist": False,
}


def fake_arrays(kind, seed):
    rng = np.random.default_rng(seed)
    out = {}
    for key in kind_arrays(kind, PROFILE):
        shape, dtype = array_spec(key, PROFILE)
        out[key] = (rng.random(shape) * 10).astype(dtype)
    return out


def write_shard(path, n=3, kind="mesh", **kw):
    with ShardWriter(path, dataset="ds", shard=0, n_shards=1, kind=kind, profile=PROFILE, **kw) as w:
        for i in range(n):
            arrays = fake_arrays(kind, i)
            if "keys" in kw:
                arrays = {k: arrays[k] for k in kw["keys"]}
            w.append(f"ds/c/{i}", arrays)
    return path


def test_item_store_round_trip(tmp_path):
    meshes = [(np.random.rand(5, 3), np.array([[0, 1, 2], [2, 3, 4]])), (np.random.rand(3, 3), np.array([[0, 1, 2]]))]
    with ItemStoreWriter(tmp_path / "i.h5", "ds", "mesh") as w:
        for i, (v, f) in enumerate(meshes):
            w.add(f"ds/c/{i}", vertices=v, faces=f)
    store = ItemStore(tmp_path / "i.h5")
    assert len(store) == 2 and store.row_of("ds/c/1") == 1
    for i, (v, f) in enumerate(meshes):
        v2, f2 = store.mesh(i)
        assert np.array_equal(v2, v) and np.array_equal(f2, f)


def test_item_store_rejects_wrong_fields_and_is_atomic(tmp_path):
    with pytest.raises(ValueError, match="needs fields"):
        with ItemStoreWriter(tmp_path / "i.h5", "ds", "mesh") as w:
            w.add("x", points=np.zeros((3, 3)))
    assert not (tmp_path / "i.h5").exists()
    assert list(tmp_path.iterdir()) == []


def test_shard_round_trip_and_validation(tmp_path):
    path = write_shard(tmp_path / "s.h5")
    assert validate_shard(path, dataset="ds", shard=0, profile=PROFILE, deep=True) is None
    reader = ShardReader(path)
    assert reader.shape_ids == ["ds/c/0", "ds/c/1", "ds/c/2"]
    expected = fake_arrays("mesh", 1)
    got = reader.read(1)
    for key, value in expected.items():
        assert np.array_equal(got[key], value)


def test_pc_reader_cannot_reach_mesh_arrays(tmp_path):
    path = write_shard(tmp_path / "s.h5")
    with ShardReader(path, primitive="pc") as reader:
        assert "pool_dist_mesh" not in reader.allowed
        with pytest.raises(PermissionError, match="pool_dist_mesh"):
            reader.read(0, ["pool_dist_mesh"])
        assert set(reader.read(0)) == set(PRIMITIVE_ARRAYS["pc"]) & set(kind_arrays("mesh", PROFILE))


def test_pointcloud_shard_lacks_mesh_arrays(tmp_path):
    path = write_shard(tmp_path / "s.h5", kind="pointcloud")
    with h5py.File(path) as h5:
        assert "pool_dist_mesh" not in h5 and "ray_t_mesh" not in h5


def test_subset_shard_physically_lacks_other_arrays(tmp_path):
    keys = PRIMITIVE_ARRAYS["udf"]
    path = write_shard(tmp_path / "s.h5", keys=keys)
    assert validate_shard(path, deep=True) is None
    with h5py.File(path) as h5:
        assert set(h5) == set(keys) | {"shape_id"}


@pytest.mark.parametrize("damage", ["truncate", "foreign", "profile", "dataset", "incomplete", "garbage"])
def test_invalid_shards_are_detected(tmp_path, damage):
    path = write_shard(tmp_path / "s.h5")
    expect = dict(dataset="ds", shard=0, profile=PROFILE)
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        path.unlink()
        with h5py.File(path, "w") as h5:
            h5["x"] = np.zeros(3)
    elif damage == "profile":
        expect["profile"] = {**PROFILE, "pt_pool": 7}
    elif damage == "dataset":
        expect["dataset"] = "other"
    elif damage == "incomplete":
        with h5py.File(path, "a") as h5:
            h5.attrs["complete"] = 0
    elif damage == "garbage":
        path.write_bytes(b"not an hdf5 file at all")
    reason = validate_shard(path, deep=True, **expect)
    assert reason is not None
    if damage in ("truncate", "foreign", "incomplete", "garbage"):
        with pytest.raises(ValueError, match="invalid cache shard"):
            ShardReader(path)


def test_failed_shard_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="mismatch"):
        with ShardWriter(tmp_path / "s.h5", dataset="ds", shard=0, n_shards=1, kind="mesh", profile=PROFILE) as w:
            w.append("a", {"pc_xyz": np.zeros((8, 3))})
    assert list(tmp_path.iterdir()) == []


def test_quarantine_moves_aside(tmp_path):
    path = write_shard(tmp_path / "s.h5")
    moved = quarantine(path)
    assert not path.exists() and moved.exists() and moved.name.endswith(".invalid")


def test_shard_assignment_is_stable_and_spread():
    ids = [f"ds/c/{i}" for i in range(1000)]
    counts = np.bincount([shard_of(i, 4) for i in ids], minlength=4)
    assert counts.min() > 180  # roughly uniform
    # pinned values: the assignment must never change between releases (it decides where shapes live)
    assert [shard_of(f"ds/c/{i}", 4) for i in range(5)] == EXPECTED_FIRST_SHARDS
