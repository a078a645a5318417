"""build_cache_shard and index_cache: valid shards, recorded failures, shard-count independence, validation."""

import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import trimesh

from pipeline3d.data.cache.index import build_index
from pipeline3d.io.cache_schema import profile_of
from pipeline3d.io.itemstore import ItemStoreWriter
from pipeline3d.io.shards import ShardReader, shard_failures, shard_of, validate_shard
from pipeline3d.stages import build_cache_shard, index_cache

CACHE = {
    "shards": 2,
    "pc_points": 128,
    "pt_pool": 300,
    "pt_surface_ratio": 0.5,
    "pt_surface_sigma": 0.02,
    "n_views": 3,
    "rays_per_view": 16,
    "camera_radius": 2.2,
    "pc_grid": 16,
    "pc_dilate": 1,
    "df_grid": 16,
    "df_dilate": 1,
    "grid_mode": "edt",
    "band_voxels": 2,
    "voxel_pool_dist": False,
    "compression": "gzip",
    "threads": 1,
}
BAD = "toy/bad/flat"


def params(**cache):
    return json.dumps(
        {"seed": 0, "dataset": "toy", "source": {"kind": "mesh"}, "cache": {**CACHE, **cache}, "stage_version": 1}
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_inputs")
    shapes = {
        "toy/ball/ico": trimesh.creation.icosphere(subdivisions=1),
        "toy/box/a": trimesh.creation.box(extents=(1.0, 0.5, 0.3)),
        "toy/ring/b": trimesh.creation.torus(major_radius=1.0, minor_radius=0.3, major_sections=10, minor_sections=6),
        "toy/box/c": trimesh.creation.box(extents=(0.2, 0.5, 0.3)),
        "toy/can/d": trimesh.creation.cylinder(radius=0.3, height=1.0, sections=12),
    }
    ids = list(shapes) + [BAD]
    with ItemStoreWriter(root / "items.h5", "toy", "mesh") as writer:
        for sid, mesh in shapes.items():
            writer.add(sid, vertices=mesh.vertices, faces=mesh.faces)
        writer.add(BAD, vertices=np.zeros((3, 3)), faces=np.array([[0, 1, 2]]))  # zero extent: cannot be cached
    pd.DataFrame({"shape_id": ids, "kind": "mesh"}).to_parquet(root / "manifest.parquet")
    return root, ids


def run_shards(inputs, out, **cache):
    root, _ = inputs
    n = cache.get("shards", CACHE["shards"])
    paths = []
    for shard in range(n):
        path = out / f"shard-{shard:04d}.h5"
        rc = build_cache_shard.main(
            [
                "--params",
                params(**cache),
                "--shard",
                f"{shard:04d}",
                "--manifest",
                str(root / "manifest.parquet"),
                "--items",
                str(root / "items.h5"),
                "--out",
                str(path),
            ]
        )
        assert rc == 0
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    return run_shards(inputs, tmp_path_factory.mktemp("shards"))


def test_shards_are_valid_and_record_the_failing_shape(inputs, built):
    _, ids = inputs
    profile = profile_of(CACHE)
    cached, failed = [], []
    for shard, path in enumerate(built):
        assert validate_shard(path, dataset="toy", shard=shard, profile=profile, deep=True) is None
        with ShardReader(path) as reader:
            assert all(shard_of(sid, 2) == shard for sid in reader.shape_ids)
            assert reader.shape_ids == [s for s in ids if shard_of(s, 2) == shard and s != BAD]  # manifest order
            cached += reader.shape_ids
        failed += shard_failures(path)
    assert sorted(cached) == sorted(set(ids) - {BAD})
    assert [(sid, reason) for sid, reason, _ in failed] == [(BAD, "degenerate")]


def test_the_codec_goes_only_to_arrays_it_shrinks(built):
    with h5py.File(built[0], "r") as h5:
        for key in ("udf_grid", "occ_grid", "ray_hit_mesh", "ray_normal_pc"):
            assert (h5[key].compression, h5[key].compression_opts) == ("gzip", 1), key
        for key in ("pc_xyz", "pool_xyz", "pool_dist_mesh", "ray_dir"):
            assert h5[key].compression is None, key


def test_a_shard_rebuilt_from_the_same_inputs_has_the_same_bytes(inputs, built, tmp_path):
    again = run_shards(inputs, tmp_path)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in built]


def test_an_unknown_codec_is_refused_naming_the_config_key(inputs, tmp_path):
    from pipeline3d.io.shards import ShardWriter

    with pytest.raises(ValueError, match="cache.compression"):
        with ShardWriter(
            tmp_path / "s.h5",
            dataset="toy",
            shard=0,
            n_shards=1,
            kind="mesh",
            profile=profile_of(CACHE),
            compression="zstd",
        ):
            pass
    assert not list(tmp_path.iterdir())  # refused before any file was opened


def test_rows_do_not_depend_on_the_shard_count(inputs, built, tmp_path):
    single = run_shards(inputs, tmp_path, shards=1)[0]
    with ShardReader(single) as one:
        rows_one = {sid: one.read(i) for i, sid in enumerate(one.shape_ids)}
    for path in built:
        with ShardReader(path) as reader:
            for i, sid in enumerate(reader.shape_ids):
                row = reader.read(i)
                for key, value in row.items():
                    np.testing.assert_array_equal(value, rows_one[sid][key], err_msg=f"{sid} {key}")


def test_index_points_at_the_right_rows_and_lists_rejects(built, tmp_path):
    out, rejects = tmp_path / "index.parquet", tmp_path / "rejects.parquet"
    rc = index_cache.main(
        ["--params", params(), "--shards", *map(str, built), "--out", str(out), "--rejects", str(rejects)]
    )
    assert rc == 0
    index = pd.read_parquet(out)
    assert list(index.columns) == ["shape_id", "shard", "shard_file", "row"]
    assert index["shape_id"].tolist() == sorted(index["shape_id"])
    for rec in index.itertuples():
        with h5py.File(built[rec.shard].parent / rec.shard_file, "r") as h5:
            assert h5["shape_id"][rec.row].decode() == rec.shape_id
            assert h5.attrs["shard"] == rec.shard
    rej = pd.read_parquet(rejects)
    assert list(rej.columns) == ["source", "stage", "reason", "detail"]
    assert rej[["source", "stage", "reason"]].values.tolist() == [[BAD, "cache", "degenerate"]]


def test_index_rejects_a_truncated_shard(built, tmp_path):
    bad = tmp_path / built[1].name
    shutil.copy(built[1], bad)
    with open(bad, "r+b") as fh:
        fh.truncate(bad.stat().st_size // 2)
    with pytest.raises(ValueError, match=str(bad).replace(".", r"\.")):
        build_index([built[0], bad], "toy", CACHE)
    good = built[0].read_bytes()
    rc = index_cache.main(
        [
            "--params",
            params(),
            "--shards",
            str(built[0]),
            str(bad),
            "--out",
            str(tmp_path / "i.parquet"),
            "--rejects",
            str(tmp_path / "r.parquet"),
        ]
    )
    assert rc == 1 and not (tmp_path / "i.parquet").exists()
    # the damaged shard is moved aside so the workflow's next run rebuilds it; the good one is left alone
    assert not bad.exists() and bad.with_name(bad.name + ".invalid").exists()
    assert built[0].read_bytes() == good


def test_index_rejects_a_foreign_file(built, tmp_path):
    foreign = tmp_path / "shard-0001.h5"
    with h5py.File(foreign, "w") as h5:
        h5.attrs["format"] = "something-else"
        h5.create_dataset("shape_id", data=np.array([b"x"]))
    with pytest.raises(ValueError, match=r"shard-0001\.h5: invalid cache shard: foreign file"):
        build_index([built[0], foreign], "toy", CACHE)


def test_index_rejects_wrong_profile_and_missing_shards(built):
    with pytest.raises(ValueError, match="different cache profile"):
        build_index(built, "toy", {**CACHE, "pt_pool": 301})
    with pytest.raises(ValueError, match=r"shards \[1\] of 2 were not given"):
        build_index(built[:1], "toy", CACHE)


def test_shard_job_refuses_inputs_out_of_step(inputs, tmp_path):
    root, ids = inputs
    pd.DataFrame({"shape_id": ids[::-1]}).to_parquet(tmp_path / "m.parquet")
    rc = build_cache_shard.main(
        [
            "--params",
            params(),
            "--shard",
            "0000",
            "--manifest",
            str(tmp_path / "m.parquet"),
            "--items",
            str(root / "items.h5"),
            "--out",
            str(tmp_path / "shard-0000.h5"),
        ]
    )
    assert rc == 2 and not (tmp_path / "shard-0000.h5").exists()
    rc = build_cache_shard.main(
        [
            "--params",
            params(),
            "--shard",
            "0002",
            "--manifest",
            str(root / "manifest.parquet"),
            "--items",
            str(root / "items.h5"),
            "--out",
            str(tmp_path / "shard-0002.h5"),
        ]
    )
    assert rc == 2
