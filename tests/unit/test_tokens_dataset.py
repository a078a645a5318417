"""ShapeTokenDataset: draw keys (train by shape/epoch/draw, eval by shape id only), two views, occupancy targets,
lazy per-process shard access (pickling, DataLoader workers), the per-shape cache, entry resolution."""

import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline3d.data.cache.voxel_walk import voxelize
from pipeline3d.io.shards import ShardReader
from pipeline3d.tokens import CacheEntry, EpochView, MixedCorpus, ShapeTokenDataset, collate, resolve_entries
from pipeline3d.tokens import layout as L
from tokens_fixtures import LABELS, write_mesh_cache

TOK = {"n_point": 12, "n_ray": 8, "qa_tokens": True, "drop_ray_prob": 0.0, "eval_seed": 3}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    index, shards = write_mesh_cache(root)
    ids = pd.read_parquet(index)["shape_id"].tolist()
    entries = resolve_entries(index, shards, ids, [LABELS[s] for s in ids])
    return root, index, shards, entries


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_resolve_entries_follows_the_index(cache):
    _, index, shards, entries = cache
    table = pd.read_parquet(index)
    assert [e.shape_id for e in entries] == table["shape_id"].tolist()
    for e, (_, row) in zip(entries, table.iterrows()):
        assert e.shard_path.endswith(row["shard_file"]) and e.row == row["row"] and e.label == LABELS[e.shape_id]
    picked = resolve_entries(index, shards, ["ds/solid/box", "ds/ring/torus"])
    assert [e.shape_id for e in picked] == ["ds/solid/box", "ds/ring/torus"] and picked[0].label == -1
    with pytest.raises(ValueError, match="not in the cache"):
        resolve_entries(index, shards, ["ds/solid/nope"])
    with pytest.raises(ValueError, match="labels"):
        resolve_entries(index, shards, ["ds/solid/box"], [0, 1])


def test_sample_fields(cache):
    *_, entries = cache
    ds = ShapeTokenDataset(entries, "mesh", TOK, seed=0, mode="train")
    s = ds.item(2, epoch=0)
    assert s["feat"].shape == (2 + 24 + 16, 15) and s["type_id"][0] == L.BOS and s["type_id"][-1] == L.EOS
    assert int(s["shape_index"]) == 2 and int(s["label"]) == entries[2].label and int(s["draw"]) == 0
    assert "occ_target" not in s and "v2_feat" not in s
    assert ds.n_positions == 2 + 24 + 16


def test_eval_draws_are_keyed_by_shape_id_not_path_or_position(cache, tmp_path):
    _, _, shards, entries = cache
    ds = ShapeTokenDataset(entries, "pointcloud", TOK, seed=0, mode="eval")
    # a copy of the cache at another path, entries in another order, a different training seed
    for shard in shards:
        shutil.copy(shard, tmp_path / shard.name)
    moved = [
        CacheEntry(e.shape_id, str(tmp_path / e.shard_path.rsplit("/", 1)[1]), e.row, e.label)
        for e in reversed(entries)
    ]
    other = ShapeTokenDataset(moved, "pointcloud", TOK, seed=99, mode="eval")
    n = len(entries)
    for i in range(n):
        assert same(ds.item(i, epoch=0), {**other.item(n - 1 - i, epoch=5), "shape_index": np.int64(i)})
    # different shapes, different draws; another MC draw or eval seed, other tokens
    a = ds.item(0)
    assert not np.array_equal(a["feat"], ds.item(1)["feat"])
    assert not np.array_equal(a["feat"], ds.item(0, draw=1)["feat"])
    reseeded = ShapeTokenDataset(entries, "pointcloud", {**TOK, "eval_seed": 4}, seed=0, mode="eval")
    assert not np.array_equal(a["feat"], reseeded.item(0)["feat"])
    assert [
        int(s["draw"]) for s in ShapeTokenDataset(entries, "pointcloud", TOK, seed=0, mode="eval", mc_draws=3).draws(1)
    ] == [0, 1, 2]


def test_train_draws_depend_on_seed_epoch_and_draw_and_are_reproducible(cache):
    *_, entries = cache
    ds = ShapeTokenDataset(entries, "mesh", TOK, seed=0, mode="train")
    again = ShapeTokenDataset(entries, "mesh", TOK, seed=0, mode="train")
    assert same(ds.item(1, epoch=2, draw=1), again.item(1, epoch=2, draw=1))
    base = ds.item(1, epoch=2)["feat"]
    assert not np.array_equal(base, ds.item(1, epoch=3)["feat"])
    assert not np.array_equal(base, ds.item(1, epoch=2, draw=1)["feat"])
    assert not np.array_equal(base, ShapeTokenDataset(entries, "mesh", TOK, seed=1, mode="train").item(1, 2)["feat"])


def test_ray_dropout_only_in_train_mode(cache):
    *_, entries = cache
    tok = {**TOK, "drop_ray_prob": 1.0}
    train = ShapeTokenDataset(entries, "mesh", tok, seed=0, mode="train").item(0)
    evaluation = ShapeTokenDataset(entries, "mesh", tok, seed=0, mode="eval").item(0)
    assert not np.isin(train["type_id"], [L.Q_RAY, L.A_RAY]).any() and train["pos"][-1] == 1 + 24 + 16
    assert (evaluation["type_id"] == L.Q_RAY).sum() == 8


def test_two_views_are_independent_draws_of_the_same_shape(cache):
    *_, entries = cache
    ds = ShapeTokenDataset(entries, "pointcloud", TOK, seed=0, mode="train", two_views=True)
    s = ds.item(3, epoch=1)
    assert s["v2_feat"].shape == s["feat"].shape and np.array_equal(s["v2_type_id"], s["type_id"])
    assert not np.array_equal(s["v2_feat"], s["feat"])
    plain = ShapeTokenDataset(entries, "pointcloud", TOK, seed=0, mode="train").item(3, epoch=1)
    np.testing.assert_array_equal(plain["feat"], s["feat"])  # the first view is the ordinary sample
    with ShardReader(entries[3].shard_path, "pc") as reader:
        pool = reader.read(entries[3].row, ["pool_xyz"])["pool_xyz"]
    q = s["v2_feat"][s["v2_type_id"] == L.Q_POINT, :3]
    assert all(np.all(pool == p, axis=1).any() for p in q)  # drawn from this shape's pool


@pytest.mark.parametrize("backend", ["mesh", "udfgrid"])
def test_occupancy_target(cache, backend):
    *_, entries = cache
    ds = ShapeTokenDataset(entries, backend, TOK, seed=0, mode="train", occ_grid=8)
    occ = ds.item(4)["occ_target"]
    assert occ.shape == (512,) and occ.dtype == np.float32 and set(np.unique(occ)) == {0.0, 1.0}
    if backend == "mesh":
        with ShardReader(entries[4].shard_path, "mesh") as reader:
            pc = reader.read(entries[4].row, ["pc_xyz"])["pc_xyz"]
        np.testing.assert_array_equal(occ, voxelize(pc.astype(np.float64), 8).ravel())


def test_pickles_without_open_handles_and_gives_the_same_samples(cache):
    *_, entries = cache
    ds = ShapeTokenDataset(entries, "voxel", TOK, seed=0, mode="train")
    first = ds.item(0, epoch=4)
    state = ds.__getstate__()
    assert "_readers" not in state and "_cache" not in state
    clone = pickle.loads(pickle.dumps(ds))
    assert same(clone.item(0, epoch=4), first)
    ds.close()
    assert same(ds.item(0, epoch=4), first)  # reopens lazily after close


def test_per_shape_cache(cache):
    *_, entries = cache
    cached = ShapeTokenDataset(entries, "voxel", TOK, seed=0, mode="train")
    assert cached.shape_record(1) is cached.shape_record(1)
    uncached = ShapeTokenDataset(entries, "voxel", TOK, seed=0, mode="train", cache_mb=0)
    assert uncached.shape_record(1) is not uncached.shape_record(1)
    assert same(cached.item(1, 2), uncached.item(1, 2))
    size = sum(v.nbytes for v in cached.shape_record(0)["pools"].values())
    tiny = ShapeTokenDataset(entries, "voxel", TOK, seed=0, mode="train", cache_mb=1.5 * size / 2**20)  # 1 record
    first = tiny.shape_record(0)
    assert tiny.shape_record(0) is first
    tiny.shape_record(1)
    assert tiny.shape_record(0) is not first  # evicted (least recently used)


def test_stale_entry_is_an_error(cache):
    *_, entries = cache
    wrong = [CacheEntry("ds/solid/box", entries[0].shard_path, entries[0].row)]
    if entries[0].shape_id == "ds/solid/box":
        wrong = [CacheEntry("ds/ring/torus", entries[0].shard_path, entries[0].row)]
    with pytest.raises(ValueError, match="stale"):
        ShapeTokenDataset(wrong, "mesh", TOK, seed=0, mode="eval").item(0)
    with pytest.raises(ValueError, match="mode"):
        ShapeTokenDataset(entries, "mesh", TOK, seed=0, mode="test")


def test_dataloader_workers_give_the_same_batches(cache):
    *_, entries = cache
    mesh = ShapeTokenDataset(entries, "mesh", TOK, seed=0, mode="train", occ_grid=4, two_views=True)
    udf = ShapeTokenDataset(entries, "udfgrid", TOK, seed=0, mode="train", occ_grid=4, two_views=True)
    corpus = MixedCorpus([(mesh, 0.5), (udf, 0.5)], samples_per_epoch=12, seed=0)
    mesh.item(0)  # the parent holds open readers when the workers fork
    view = EpochView(corpus, epoch=1)
    serial = list(DataLoader(view, batch_size=4, collate_fn=collate, num_workers=0))
    parallel = list(DataLoader(view, batch_size=4, collate_fn=collate, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert set(torch.cat([b["component"] for b in serial]).tolist()) == {0, 1}
