"""Fault injection: a flipped byte or a cut in any file the pipeline reads back is detected and named.

Files: a cache shard, an item store, an unpaired store, an embeddings parquet and an exported encoder. Each is built
by the real writer, damaged on disk, then read the way stages read it (and by ``pipeline3d verify``). A sweep of
single-byte flips over a whole shard checks that every flip that would change what a reader gets is caught.
SIGKILL mid-write is in test_atomic_rng; a wrong raw path in test_rawpaths / test_raw_folder; the rerun that
rebuilds a damaged shard byte for byte in tests/e2e/test_rerun.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline3d.cli import main as cli
from pipeline3d.data.cache.index import InvalidShards, build_index
from pipeline3d.data.unpaired_store import materialize, open_unpaired
from pipeline3d.embed.vectors import read_vectors, write_vectors
from pipeline3d.io.integrity import IntegrityError
from pipeline3d.io.itemstore import ItemStore
from pipeline3d.io.shards import ShardReader, validate_shard
from pipeline3d.models import create_encoder
from pipeline3d.stages import index_cache
from pipeline3d.train.export import load_encoder, save_encoder
from test_cache_stages import CACHE, inputs, params, run_shards  # noqa: F401 - inputs: module fixture

META = {"model": "x", "weights_sha256": "0" * 64, "preprocessing": "{}"}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def chunk_middle(path: Path, array: str, row: int) -> int:
    """The file offset of the middle of ``array``'s chunk holding ``row`` (HDF5's own chunk index)."""
    with h5py.File(path, "r") as h5:
        ds = h5[array]
        info = ds.id.get_chunk_info_by_coord((row,) + (0,) * (ds.ndim - 1))
        return info.byte_offset + info.size // 2


@pytest.fixture(scope="module")
def shards(inputs, tmp_path_factory):  # noqa: F811 - the imported fixture
    return run_shards(inputs, tmp_path_factory.mktemp("fault_shards"))


@pytest.fixture
def shard(shards, tmp_path):
    """A private copy of shard 0 in a cache folder of its own."""
    copy = tmp_path / "cache" / shards[0].name
    copy.parent.mkdir()
    shutil.copy(shards[0], copy)
    return copy


def test_flipped_byte_in_an_array_is_named_with_file_shape_and_array_and_the_shard_moved_aside(shard):
    with ShardReader(shard) as reader:
        sid, good = reader.shape_ids[1], reader.read(0, ["pool_dist_mesh"])
    flip(shard, chunk_middle(shard, "pool_dist_mesh", 1))
    assert validate_shard(shard) is None  # the cheap open-time check cannot see it ...
    assert "damaged: array pool_dist_mesh" in validate_shard(shard, deep=True)  # ... the deep one does
    with ShardReader(shard) as reader:
        assert np.array_equal(reader.read(0, ["pool_dist_mesh"])["pool_dist_mesh"], good["pool_dist_mesh"])
        with pytest.raises(IntegrityError) as info:
            reader.read(1, ["pool_dist_mesh"])
    message = str(info.value)
    assert str(shard) in message and f"shape {sid} (row 1): array pool_dist_mesh" in message
    assert "run the workflow again to rebuild it" in message
    assert not shard.exists() and shard.with_name(shard.name + ".invalid").exists()


def test_index_cache_refuses_a_damaged_shard_and_moves_it_aside(shards, shard, tmp_path):
    flip(shard, chunk_middle(shard, "pc_xyz", 0))
    with pytest.raises(InvalidShards, match=rf"{shard}: invalid cache shard: damaged: array pc_xyz") as info:
        build_index([shard, shards[1]], "toy", CACHE)
    assert info.value.damaged == [shard]
    rc = index_cache.main(
        [
            "--params",
            params(),
            "--shards",
            str(shard),
            str(shards[1]),
            "--out",
            str(tmp_path / "i.parquet"),
            "--rejects",
            str(tmp_path / "r.parquet"),
        ]
    )
    assert rc == 1 and not shard.exists() and shards[1].exists()


def test_every_flip_that_changes_what_a_reader_sees_is_caught(shards, tmp_path):
    """Single-byte flips at 160 offsets spread over a shard: each one is either reported by the deep check or
    lands in bytes no reader uses (free space), which leaves every array, id and attribute as it was."""

    def contents(path: Path) -> dict:
        with h5py.File(path, "r") as h5:
            out = {"attrs": {k: str(v) for k, v in h5.attrs.items()}}
            for name, ds in h5.items():
                out[name] = ds[()].tobytes() if ds.dtype.kind != "O" else repr(ds[()].tolist())
            return out

    good, base = shards[0].read_bytes(), contents(shards[0])
    target = tmp_path / "cache" / shards[0].name
    target.parent.mkdir()
    caught = 0
    for offset in np.linspace(0, len(good) - 1, 160).astype(int):
        target.write_bytes(good)
        flip(target, int(offset))
        if validate_shard(target, deep=True) is not None:
            caught += 1
            continue
        assert contents(target) == base, f"a flip at byte {offset} changed the data and went unnoticed"
    assert caught > 100  # most of a shard is data and checksummed metadata


def test_truncated_shard_is_named(shard):
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 2 // 3])
    reason = validate_shard(shard, deep=True)
    assert reason and reason.startswith("unreadable")


def test_item_store_flip_names_the_item_and_field(inputs, tmp_path):  # noqa: F811
    root, ids = inputs
    store = tmp_path / "items.h5"
    shutil.copy(root / "items.h5", store)
    flip(store, chunk_middle(store, "vertices", 0))
    with ItemStore(store) as items:
        with pytest.raises(IntegrityError, match=rf"{store}: item {ids[0]} \(row 0\): field vertices"):
            items.mesh(0)


def test_unpaired_store_flip_is_caught(inputs, shards, tmp_path):  # noqa: F811
    _, ids = inputs
    index, _ = build_index(shards, "toy", CACHE)
    index.to_parquet(tmp_path / "index.parquet")
    cached = sorted(index["shape_id"])
    pd.DataFrame({"shape_id": cached, "split": "train_pc", "primitive": "pc"}).to_parquet(tmp_path / "unpaired.parquet")
    store = tmp_path / "unpaired" / "train_pc.h5"
    materialize(
        "train_pc",
        tmp_path / "unpaired.parquet",
        tmp_path / "index.parquet",
        shards,
        store,
        dataset="toy",
        cache_profile=None,
    )
    with open_unpaired(store) as reader:
        key = reader.allowed[0]
    flip(store, chunk_middle(store, key, 0))
    with open_unpaired(store) as reader, pytest.raises(IntegrityError, match=rf"shape {cached[0]} \(row 0\)"):
        reader.read(0)


def test_embeddings_parquet_flip_and_cut_are_named(tmp_path):
    path = tmp_path / "emb.parquet"
    ids = [f"s{i:03d}" for i in range(200)]
    write_vectors(path, ids, np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32), META)
    good = path.read_bytes()
    flip(path, len(good) // 3)  # inside the vector column's data pages
    with pytest.raises(IntegrityError, match=str(path)):
        read_vectors(path)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(IntegrityError, match=str(path)):
        read_vectors(path)


def test_exported_encoder_flip_is_named(tmp_path):
    torch.manual_seed(0)
    encoder = create_encoder("query_nepa_tiny", n_positions=16)
    weights, sidecar = tmp_path / "encoder.safetensors", tmp_path / "encoder.json"
    save_encoder(encoder, weights, sidecar, {})
    flip(weights, weights.stat().st_size // 2)
    with pytest.raises(IntegrityError, match=rf"{weights}: sha256 .* does not match {sidecar}"):
        load_encoder(weights, sidecar)


def test_verify_lists_every_damaged_output_and_passes_a_clean_tree(inputs, shards, tmp_path, capsys):  # noqa: F811
    root, _ = inputs
    results = tmp_path / "results"
    (results / "cache" / "toy").mkdir(parents=True)
    for path in shards:
        shutil.copy(path, results / "cache" / "toy" / path.name)
    (results / "ingest" / "toy").mkdir(parents=True)
    shutil.copy(root / "items.h5", results / "ingest" / "toy" / "items.h5")
    write_vectors(results / "embeddings" / "e.parquet", ["a", "b"], np.eye(2, dtype=np.float32), META)
    torch.manual_seed(0)
    save_encoder(
        create_encoder("query_nepa_tiny", n_positions=16),
        results / "models" / "m" / "encoder.safetensors",
        results / "models" / "m" / "encoder.json",
        {},
    )
    (results / "logs").mkdir()
    (results / "logs" / "x.json").write_text("not json, but a log folder is not checked")
    assert cli(["verify", str(results)]) == 0
    assert "checked 6 files" in capsys.readouterr().out

    damaged = [
        results / "cache" / "toy" / shards[0].name,
        results / "ingest" / "toy" / "items.h5",
        results / "embeddings" / "e.parquet",
        results / "models" / "m" / "encoder.safetensors",
    ]
    flip(damaged[0], chunk_middle(damaged[0], "udf_grid", 0))
    flip(damaged[1], chunk_middle(damaged[1], "faces", 0))
    flip(damaged[2], damaged[2].stat().st_size // 3)
    flip(damaged[3], damaged[3].stat().st_size // 2)
    assert cli(["verify", str(results), "--move-aside"]) == 1
    out = capsys.readouterr().out
    assert sorted(
        line.split(": ")[0].removeprefix("DAMAGED ") for line in out.splitlines() if line.startswith("DAMAGED")
    ) == sorted(map(str, damaged))
    assert "array udf_grid" in out and "array faces" in out and "4 damaged" in out
    assert all(p.with_name(p.name + ".invalid").exists() and not p.exists() for p in damaged)
