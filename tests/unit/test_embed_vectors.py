"""Embeddings parquet: fixed-size-list float32 vectors + provenance metadata, atomic and deterministic."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline3d.embed.vectors import FORMAT, read_metadata, read_vectors, write_vectors

META = {
    "model": "tf_efficientnet_lite0",
    "weights_sha256": "ab" * 32,
    "preprocessing": {"input_size": [3, 224, 224], "mean": [0.5] * 3, "std": [0.5] * 3},
}


def _vectors(n=5, d=7, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_round_trip_keeps_bits_columns_and_metadata(tmp_path):
    ids = [f"demo/chair/m{i}" for i in range(5)]
    vectors = _vectors()
    path = tmp_path / "emb" / "image.parquet"
    write_vectors(path, ids, vectors, META, columns={"label": [0, 1, 0, 2, 1], "view": ["a", "b", "c", "d", "e"]})

    schema = pq.read_schema(path)
    assert schema.field("vector").type == pa.list_(pa.float32(), 7)
    assert schema.names == ["shape_id", "label", "view", "vector"]
    emb = read_vectors(path)
    assert emb.ids == ids and emb.id_column == "shape_id" and emb.dim == 7
    assert emb.vectors.dtype == np.float32 and emb.vectors.tobytes() == vectors.tobytes()
    assert emb.columns == {"label": [0, 1, 0, 2, 1], "view": ["a", "b", "c", "d", "e"]}
    meta = read_metadata(path)
    assert meta["model"] == META["model"] and meta["weights_sha256"] == META["weights_sha256"]
    assert json.loads(meta["preprocessing"]) == META["preprocessing"]
    assert (meta["format"], meta["dim"], meta["id_column"]) == (FORMAT, "7", "shape_id")


def test_same_rows_give_the_same_bytes(tmp_path):
    ids = ["b", "a", "c"]
    for name in ("one.parquet", "two.parquet"):
        write_vectors(tmp_path / name, ids, _vectors(3), META, id_column="caption_id")
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()
    assert read_vectors(tmp_path / "one.parquet").ids == ids


@pytest.mark.parametrize(
    "ids, vectors, meta, message",
    [
        (["a", "a"], _vectors(2), META, "duplicate id 'a'"),
        (["a", "b"], _vectors(3), META, "2 ids for 3 vectors"),
        (["a"], np.full((1, 3), np.nan, np.float32), META, "NaN"),
        (["a"], _vectors(1), {"model": "m"}, "lacks"),
        (["a"], _vectors(1), {**META, "dim": "3"}, "set by write_vectors"),
        (["a"], np.ones(3, np.float32), META, r"\(N, D\)"),
    ],
)
def test_bad_input_is_refused_before_touching_the_file(tmp_path, ids, vectors, meta, message):
    path = tmp_path / "emb.parquet"
    write_vectors(path, ["x"], _vectors(1), META)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        write_vectors(path, ids, vectors, meta)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet"]  # no temporary left behind


def test_reader_refuses_files_that_are_not_embeddings(tmp_path):
    path = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"shape_id": ["a"], "vector": [[1.0, 2.0]]}), path)
    with pytest.raises(ValueError, match="not an embeddings file"):
        read_vectors(path)
