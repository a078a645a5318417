"""Per-primitive unpaired stores: only the primitive's arrays exist in the file, rows are the split's shapes."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest

from pipeline3d.data.unpaired_store import materialize, open_unpaired
from pipeline3d.io.cache_schema import ARRAYS, PRIMITIVE_ARRAYS, array_spec, kind_arrays, profile_of
from pipeline3d.io.shards import ShardReader, ShardWriter, validate_shard
from pipeline3d.stages import materialize_unpaired

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
IDS = [f"ds/c{i % 2}/m{i}" for i in range(7)]
SPLIT_OF = {
    IDS[0]: "train_pc",
    IDS[1]: "train_mesh",
    IDS[2]: "train_pc",
    IDS[3]: "train_udf",
    IDS[4]: "eval",
    IDS[5]: "train_pc",
    IDS[6]: "eval",
}
PRIM = {"train_mesh": "mesh", "train_pc": "pc", "train_udf": "udf", "eval": "all"}
MESH_DERIVED = {k for k, (_, _, prov) in ARRAYS.items() if prov == "mesh"}


def held(primitive: str) -> list[str]:
    """What a primitive sees of these shards (the optional arrays are off in PROFILE)."""
    return [k for k in PRIMITIVE_ARRAYS[primitive] if k in kind_arrays("mesh", PROFILE)]


def arrays_of(sid: str) -> dict[str, np.ndarray]:
    """Every array filled with a value that identifies the shape, so copies can be checked."""
    k = IDS.index(sid) + 1
    return {
        key: np.full(*array_spec(key, PROFILE)[:1], k, dtype=array_spec(key, PROFILE)[1])
        for key in kind_arrays("mesh", PROFILE)
    }


@pytest.fixture
def cache(tmp_path):
    shards, rows = [], []
    for s in range(2):
        path = tmp_path / "cache" / f"shard-{s:04d}.h5"
        with ShardWriter(path, dataset="ds", shard=s, n_shards=2, kind="mesh", profile=PROFILE) as w:
            for row, sid in enumerate(sid for i, sid in enumerate(IDS) if i % 2 == s):
                w.append(sid, arrays_of(sid))
                rows.append((sid, s, row))
        shards.append(path)
    pd.DataFrame(rows, columns=["shape_id", "shard", "row"]).to_parquet(tmp_path / "cache" / "index.parquet")
    table = pd.DataFrame({"shape_id": IDS, "label": [i % 2 for i in range(7)], "split": [SPLIT_OF[s] for s in IDS]})
    table["primitive"] = table["split"].map(PRIM)
    table.to_parquet(tmp_path / "unpaired.parquet")
    return tmp_path, shards


def test_train_pc_store_physically_lacks_mesh_arrays(cache):
    tmp, shards = cache
    out = tmp / "unpaired" / "train_pc.h5"
    assert (
        materialize("train_pc", tmp / "unpaired.parquet", tmp / "cache" / "index.parquet", shards, out, dataset="ds")
        == 3
    )
    with h5py.File(out, "r") as h5:
        datasets = set(h5.keys())
        assert h5.attrs["unpaired_split"] == "train_pc" and h5.attrs["primitive"] == "pc"
        assert json.loads(h5.attrs["arrays"]) == held("pc")
    assert datasets == set(held("pc")) | {"shape_id"}
    assert not datasets & MESH_DERIVED  # no ray_t_mesh, pool_dist_mesh, ...: not even hidden behind a reader
    assert validate_shard(out, deep=True) is None
    with open_unpaired(out) as reader:
        want = sorted(s for s in IDS if SPLIT_OF[s] == "train_pc")
        assert reader.shape_ids == want
        for row, sid in enumerate(want):
            got = reader.read(row)
            assert set(got) == set(held("pc"))
            assert all(np.all(v == IDS.index(sid) + 1) for v in got.values())  # the right shape's data
        with pytest.raises(PermissionError):
            reader.read(0, ["ray_t_mesh"])
    # even a reader asking for the mesh primitive finds no mesh-derived array in this file
    with ShardReader(out, "mesh") as reader:
        assert not set(reader.allowed) & MESH_DERIVED
        with pytest.raises(PermissionError):
            reader.read(0, ["pool_dist_mesh"])


@pytest.mark.parametrize("split", ["train_mesh", "train_udf", "eval"])
def test_each_split_holds_exactly_its_primitive(cache, split):
    tmp, shards = cache
    out = tmp / f"{split}.h5"
    materialize(split, tmp / "unpaired.parquet", tmp / "cache" / "index.parquet", shards, out, dataset="ds")
    with h5py.File(out, "r") as h5:
        assert set(h5.keys()) - {"shape_id"} == set(held(PRIM[split]))
        assert [s.decode() for s in h5["shape_id"][:]] == sorted(s for s in IDS if SPLIT_OF[s] == split)
    if split == "train_udf":
        with h5py.File(out, "r") as h5:
            assert "pc_xyz" not in h5 and "ray_t_pc" not in h5  # udf sees neither the point cloud nor rays


def test_stores_use_the_cache_codec_and_repeat_their_bytes(cache):
    tmp, shards = cache
    outs = [tmp / f"again-{n}.h5" for n in range(2)]
    for out in outs:
        materialize(
            "eval",
            tmp / "unpaired.parquet",
            tmp / "cache" / "index.parquet",
            shards,
            out,
            dataset="ds",
            compression="gzip",
        )
    assert outs[0].read_bytes() == outs[1].read_bytes()
    with h5py.File(outs[0], "r") as h5:
        assert h5["udf_grid"].compression == "gzip" and h5["pc_xyz"].compression is None  # raw where it cannot shrink


def test_stage_cli_and_errors(cache, capsys):
    tmp, shards = cache
    cfg = {"shards": 2, **PROFILE, "compression": "lzf", "threads": 1}
    params = {"seed": 0, "dataset": "ds", "source": {"kind": "mesh"}, "cache": cfg, "stage_version": 1}
    argv = [
        "--params",
        json.dumps(params),
        "--split",
        "train_pc",
        "--unpaired",
        str(tmp / "unpaired.parquet"),
        "--index",
        str(tmp / "cache" / "index.parquet"),
        "--shards",
        *map(str, shards),
        "--out",
        str(tmp / "o" / "train_pc.h5"),
    ]
    assert materialize_unpaired.main(argv) == 0
    assert (tmp / "o" / "train_pc.h5").exists()
    # a cache built with another profile is refused
    other = {**params, "cache": {**cfg, "pc_points": 16}}
    assert materialize_unpaired.main(["--params", json.dumps(other), *argv[2:]]) == 1
    assert "another profile" in capsys.readouterr().err
    # a split row the cache does not hold is an error naming the table
    table = pd.read_parquet(tmp / "unpaired.parquet")
    pd.concat(
        [table, pd.DataFrame({"shape_id": ["ds/c0/ghost"], "label": [0], "split": ["train_pc"], "primitive": ["pc"]})]
    ).to_parquet(tmp / "unpaired.parquet")
    assert materialize_unpaired.main(argv) == 1
    assert "unpaired.parquet: 1 shapes of split train_pc are not in the cache index" in capsys.readouterr().err
    # a primitive that contradicts the split is refused
    table.assign(primitive="all").to_parquet(tmp / "unpaired.parquet")
    assert materialize_unpaired.main(argv) == 1
    assert "expected 'pc'" in capsys.readouterr().err


def test_empty_split_gives_a_valid_empty_store(cache):
    tmp, shards = cache
    table = pd.read_parquet(tmp / "unpaired.parquet")
    table[table["split"] != "train_udf"].to_parquet(tmp / "unpaired.parquet")
    out = tmp / "train_udf.h5"
    assert (
        materialize(
            "train_udf",
            tmp / "unpaired.parquet",
            tmp / "cache" / "index.parquet",
            shards,
            out,
            dataset="ds",
            cache_profile=profile_of({**PROFILE}),
        )
        == 0
    )
    with open_unpaired(out) as reader:
        assert len(reader) == 0
