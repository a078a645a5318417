"""Voxel backend's lazy distances: evaluated only at the drawn pool indices, with the bits of the full-grid path
(EDT of the whole grid, then trilinear at every query); the tokenizer asks only for the drawn points, and voxel
tokens stay deterministic."""

import numpy as np
import pytest

from pipeline3d.data.cache import grids
from pipeline3d.data.cache.voxel_walk import dilate, voxelize
from pipeline3d.io.shards import ShardReader
from pipeline3d.tokens import CacheEntry, ShapeTokenDataset, get_backend, tokenize
from pipeline3d.tokens import layout as L
from pipeline3d.tokens.backends import VoxelDistances
from tokens_fixtures import PROFILE, write_mesh_cache

TOK = {"n_point": 24, "n_ray": 16, "qa_tokens": True, "add_eos": True, "drop_ray_prob": 0.0, "eval_seed": 3}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    _, shards = write_mesh_cache(tmp_path_factory.mktemp("cache"))
    rows = []
    for path in shards:
        with ShardReader(path, "all") as reader:
            rows += [(str(path), row, sid, reader.read(row)) for row, sid in enumerate(reader.shape_ids)]
    return rows


def full_grid_distances(pc_xyz, pool_xyz, grid, dilations):
    """The eager path: the whole EDT, trilinear at every query, cast as the pools are."""
    udf, _ = grids.edt_grid(np.asarray(pc_xyz, dtype=np.float64), grid, dilations)
    return grids.trilinear(udf, np.asarray(pool_xyz, dtype=np.float64)).astype(np.float32)


def test_lazy_distances_equal_the_full_grid_on_every_cached_shape(cache):
    backend = get_backend("voxel")
    assert len(cache) == 5
    for path, row, sid, truth in cache:
        with backend.open(path) as reader:
            pools = backend.pools(reader, row)
        dist_at = pools["pt_dist"]
        assert callable(dist_at) and len(dist_at) == PROFILE.pt_pool
        full = full_grid_distances(truth["pc_xyz"], truth["pool_xyz"], PROFILE.pc_grid, PROFILE.pc_dilate)
        assert full.max() > 2 * grids.cell_size(PROFILE.pc_grid)  # far queries too, not only the near field
        drawn = np.random.default_rng(row).choice(PROFILE.pt_pool, size=37, replace=False)
        got = dist_at(drawn)
        assert got.dtype == np.float32 and got.shape == (37,)
        np.testing.assert_array_equal(got, full[drawn], err_msg=sid)  # same bits, not just close
        np.testing.assert_array_equal(dist_at(np.arange(PROFILE.pt_pool)), full, err_msg=sid)
        np.testing.assert_array_equal(dist_at(drawn[::-1]), full[drawn[::-1]])  # any order, repeats below
        np.testing.assert_array_equal(dist_at(np.array([5, 5, 0])), full[[5, 5, 0]])


@pytest.mark.parametrize("grid, dilations", [(8, 0), (13, 1), (32, 2), (1, 0)])
def test_lazy_distances_equal_the_full_grid_on_random_clouds(grid, dilations):
    rng = np.random.default_rng(grid)
    cloud = rng.normal(size=(150, 3))
    cloud = 0.8 * cloud / np.linalg.norm(cloud, axis=1, keepdims=True) * (1.0, 0.6, 0.3)
    queries = rng.uniform(-1.2, 1.2, size=(500, 3)).astype(np.float32)  # outside the grid too: clamped borders
    lazy = VoxelDistances(dilate(voxelize(cloud, grid), dilations), queries)
    full = full_grid_distances(cloud, queries, grid, dilations)
    picked = rng.integers(0, len(queries), size=64)
    np.testing.assert_array_equal(lazy(picked), full[picked])
    assert lazy.pool is None  # a small draw: corners only
    np.testing.assert_array_equal(lazy(np.arange(len(queries))), full)
    assert lazy.pool is not None and lazy.tree is None  # asked for the whole pool: materialised, same bits
    np.testing.assert_array_equal(lazy(picked), full[picked])


def test_full_and_empty_occupancy():
    queries = np.random.default_rng(0).uniform(-1, 1, size=(20, 3)).astype(np.float32)
    full = VoxelDistances(np.ones((4, 4, 4), dtype=bool), queries)  # no empty cell: nothing to measure from
    np.testing.assert_array_equal(full(np.arange(20)), np.zeros(20, dtype=np.float32))
    with pytest.raises(ValueError, match="no occupied cell"):
        VoxelDistances(np.zeros((4, 4, 4), dtype=bool), queries)


def test_tokenizer_asks_lazy_distances_only_for_the_drawn_points(cache):
    path, row, _, truth = cache[0]
    backend = get_backend("voxel")
    with backend.open(path) as reader:
        lazy = backend.pools(reader, row)
    asked = []

    def dist_at(indices):
        asked.append(np.array(indices))
        return lazy["pt_dist"](indices)

    eager = {**lazy, "pt_dist": lazy["pt_dist"](np.arange(PROFILE.pt_pool))}
    for qa in (False, True):
        cfg = {**TOK, "qa_tokens": qa}
        got = tokenize({**lazy, "pt_dist": dist_at}, cfg, np.random.default_rng(11))
        want = tokenize(eager, cfg, np.random.default_rng(11))
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        assert len(asked[-1]) == TOK["n_point"] and len(np.unique(asked[-1])) == TOK["n_point"]
        dist_slot = got[0][got[1] == (L.A_POINT if qa else L.POINT), L.DIST]
        np.testing.assert_array_equal(dist_slot, eager["pt_dist"][asked[-1]])
    assert eager["pt_dist"].max() > 0


def test_voxel_tokens_are_deterministic_and_cached_records_stay_small(cache):
    entries = [CacheEntry(sid, path, row) for path, row, sid, _ in cache]
    first = ShapeTokenDataset(entries, "voxel", TOK, seed=4, mode="train")
    again = ShapeTokenDataset(entries, "voxel", TOK, seed=4, mode="train", cache_mb=0)
    for index in range(len(entries)):
        a, b = first.item(index, epoch=2), again.item(index, epoch=2)
        assert a["feat"].tobytes() == b["feat"].tobytes() and np.array_equal(a["type_id"], b["type_id"])
        assert first.item(index, epoch=2)["feat"].tobytes() == a["feat"].tobytes()  # warm = cold
        assert first.item(index, epoch=3)["feat"].tobytes() != a["feat"].tobytes()  # a new draw per epoch
    # a cached shape drawn again and again switches to the materialised pool without changing a bit
    dist_at = first.shape_record(0)["pools"]["pt_dist"]
    for epoch in range(8):
        assert first.item(0, epoch)["feat"].tobytes() == again.item(0, epoch)["feat"].tobytes()
    assert dist_at.pool is not None and again.shape_record(0)["pools"]["pt_dist"].pool is None
    # the per-shape cache holds the occupancy and the tree (counted in its budget), not a full distance grid
    record = first.shape_record(0)
    dist_at = record["pools"]["pt_dist"]
    assert 0 < dist_at.nbytes
    assert not any(
        isinstance(v, np.ndarray) and v.size == PROFILE.pc_grid**3 and v.dtype == np.float64
        for v in vars(dist_at).values()
    )
