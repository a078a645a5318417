"""Mesh ingest: layouts, ids, labels, bad meshes among good ones, duplicates, max_items, determinism, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from hostile import (
    bad_index_off,
    degenerate_off,
    empty_off,
    file,
    garbage_off,
    nan_off,
    tetra_obj,
    tetra_off,
    write_tar,
    write_zip,
)
from hostile import ingest_checked as ingest
from pipeline3d.data.ingest import SHAPENET_SYNSETS, Planned, detect_mesh_layout, stratified_subset
from pipeline3d.io.itemstore import ItemStore
from pipeline3d.stages.ingest_dataset import main


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


# ------------------------------------------------------------------------------------------------ layouts


def test_shapenet_layout_ids_and_synset_names(tmp_path):
    obj = "models/model_normalized.obj"
    root = write_tree(
        tmp_path / "in",
        {
            f"02691156/m1/{obj}": tetra_obj(),
            f"03001627/m2/{obj}": tetra_obj(),
            "03001627/m2/models/model_normalized.mtl": b"newmtl a\n",
            "03001627/m2/models/model_normalized.json": b"{}",
            "03001627/m2/images/texture0.jpg": b"\xff\xd8 not decoded: not an item",
            f"99999999/m3/{obj}": tetra_obj(),  # numeric but not a ShapeNetCore synset
            f"mugs/m4/{obj}": tetra_obj(),  # a named folder (e.g. the demo data)
            "02691156/m5/model.obj": tetra_obj(),  # v1 layout mixed in
        },
    )
    manifest, rejects = ingest(tmp_path, root)
    assert manifest["shape_id"].tolist() == ["ds/02691156/m1", "ds/03001627/m2", "ds/99999999/m3", "ds/mugs/m4"]
    assert manifest["label_name"].tolist() == ["airplane", "chair", "99999999", "mugs"]
    names = sorted(["airplane", "chair", "99999999", "mugs"])
    assert manifest["label"].tolist() == [names.index(n) for n in manifest["label_name"]]
    assert set(manifest["source_split"]) == {""} and set(manifest["format"]) == {"obj"}
    assert manifest["source"][0] == f"{root}/02691156/m1/{obj}"
    assert rejects["reason"].tolist() == ["bad_layout"] and rejects["source"][0].endswith("m5/model.obj")


def test_shapenet_v1_layout_when_asked_for(tmp_path):
    root = write_tree(tmp_path / "in", {"02691156/m5/model.obj": tetra_obj()})
    manifest, rejects = ingest(tmp_path, root, fmt="shapenet")
    assert manifest["shape_id"].tolist() == ["ds/02691156/m5"] and rejects.empty


def test_synset_table_is_shapenetcore_v2():
    assert len(SHAPENET_SYNSETS) == 55 and len(set(SHAPENET_SYNSETS.values())) == 55
    assert SHAPENET_SYNSETS["04379243"] == "table" and SHAPENET_SYNSETS["02958343"] == "car"


def test_modelnet_layout_in_a_zip_with_a_top_folder(tmp_path):
    names = ["bed/train/bed_0001.off", "bed/test/bed_0101.off", "chair/train/chair_0001.off", "chair/chair_0002.off"]
    entries = [file(f"ModelNet/{n}", tetra_off()) for n in names] + [file("ModelNet/README.txt", b"hello")]
    src = write_zip(tmp_path / "in" / "mn.zip", entries)
    manifest, rejects = ingest(tmp_path, src)
    assert manifest["shape_id"].tolist() == ["ds/bed/bed_0001", "ds/bed/bed_0101", "ds/chair/chair_0001"]
    assert manifest["source_split"].tolist() == ["train", "test", "train"]
    assert manifest["label"].tolist() == [0, 0, 1]
    assert manifest["source"][1] == f"{src}::ModelNet/bed/test/bed_0101.off"
    assert rejects["reason"].tolist() == ["bad_layout"] and rejects["source"][0].endswith("chair/chair_0002.off")


def test_layout_detection():
    assert detect_mesh_layout(["a/b/c/models/model_normalized.obj"]) == "shapenet"
    assert detect_mesh_layout(["x/chair/train/a.off", "x/chair/a.off"]) == "modelnet"
    assert detect_mesh_layout(["chair/a.off", "train/notes.txt"]) == "loose"


def test_loose_layout_duplicates_and_unsupported_formats(tmp_path):
    root = write_tree(
        tmp_path / "in",
        {
            "chair/a.off": tetra_off(),
            "chair/a.obj": tetra_obj(),  # same shape id: the first source wins
            "lamp/b.obj": tetra_obj(),
            "lamp/c.glb": b"glTF",
            "loose.off": tetra_off(),
        },
    )
    manifest, rejects = ingest(tmp_path, root)
    assert manifest["shape_id"].tolist() == ["ds/chair/a", "ds/lamp/b"]
    assert manifest["source"][0].endswith("chair/a.obj")  # "a.obj" < "a.off"
    got = {Path(s).name: r for s, r in zip(rejects["source"], rejects["reason"])}
    assert got == {"a.off": "duplicate_id", "c.glb": "unsupported_format", "loose.off": "bad_layout"}
    assert "a.obj" in rejects.set_index("reason").loc["duplicate_id", "detail"]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (garbage_off(), "parse_error"),
        (nan_off(), "nonfinite"),
        (empty_off(), "empty"),
        (degenerate_off(), "degenerate"),
        (bad_index_off(), "bad_index"),
    ],
)
def test_bad_mesh_in_an_archive_is_rejected_and_the_rest_ingested(tmp_path, bad, reason):
    src = write_tar(
        tmp_path / "in" / "a.tar.gz",
        [file("chair/good.off", tetra_off()), file("chair/bad.off", bad), file("lamp/good2.obj", tetra_obj())],
    )
    manifest, rejects = ingest(tmp_path, src)
    assert manifest["shape_id"].tolist() == ["ds/chair/good", "ds/lamp/good2"]
    assert rejects["source"].tolist() == [f"{src}::chair/bad.off"] and rejects["reason"].tolist() == [reason]
    # labels come from every class the layout found, so a broken file never shifts them
    assert manifest["label"].tolist() == [0, 1]


def test_too_many_faces(tmp_path):
    root = write_tree(tmp_path / "in", {"chair/a.off": tetra_off(), "chair/b.obj": tetra_obj()})
    manifest, rejects = ingest(tmp_path, root, max_faces=3)
    assert manifest.empty and set(rejects["reason"]) == {"too_large"}


def test_items_hold_the_cleaned_meshes_in_manifest_order(tmp_path):
    messy = (
        b"OFF\n6 6 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n7 7 7\n0.5 0 0\n"
        b"3 0 2 1\n3 0 1 3\n3 0 3 2\n3 1 2 3\n3 1 2 0\n3 0 5 1\n"
    )
    root = write_tree(tmp_path / "in", {"b/messy.off": messy, "a/big.off": tetra_off(10.0)})
    manifest, _ = ingest(tmp_path, root)
    assert manifest["shape_id"].tolist() == ["ds/a/big", "ds/b/messy"]
    assert manifest["n_vertices"].tolist() == [4, 4] and manifest["n_faces"].tolist() == [4, 4]
    assert json.loads(manifest["meta"][1])["cleanup"] == {
        "faces_in": 6,
        "vertices_in": 6,
        "degenerate_faces": 1,
        "duplicate_faces": 1,
        "unreferenced_vertices": 2,
    }
    assert manifest["n_points"].isna().all() and str(manifest["n_points"].dtype) == "Int64"
    with ItemStore(tmp_path / "out" / "items.h5") as store:
        v, f = store.mesh(0)
        assert v.max() == 10.0  # source coordinates
        v, f = store.mesh(1)
        assert f.shape == (4, 3) and f.max() == 3


# ------------------------------------------------------------------------------------------------ max_items


def _planned(counts: dict[str, int]) -> list[Planned]:
    return [Planned(f"ds/{c}/{c}{i:03d}", c, "", f"src/{c}/{i}", "off") for c, n in counts.items() for i in range(n)]


def test_max_items_is_stratified_deterministic_and_order_free():
    planned = _planned({"a": 10, "b": 5, "c": 2})
    six = stratified_subset(planned, 6)
    assert [p.label_name for p in six].count("a") == 3 and [p.label_name for p in six].count("b") == 2
    assert [p.label_name for p in six].count("c") == 1
    shuffled = [planned[i] for i in np.random.default_rng(1).permutation(len(planned))]
    assert [p.shape_id for p in stratified_subset(shuffled, 6)] == [p.shape_id for p in six]
    assert {p.shape_id for p in six} <= {p.shape_id for p in stratified_subset(planned, 9)}  # grows monotonically
    three = stratified_subset(planned, 3)
    assert sorted(p.label_name for p in three) == ["a", "b", "c"]  # every class before any class twice
    assert [p.shape_id for p in six] == sorted(p.shape_id for p in six)
    # not the first items of each class: the hash decides
    assert [p.shape_id for p in six if p.label_name == "a"] != ["ds/a/a000", "ds/a/a001", "ds/a/a002"]


def test_max_items_keeps_the_labels_of_the_full_dataset(tmp_path):
    files = {f"{c}/{c}{i}.off": tetra_off() for c, n in (("a", 3), ("b", 3), ("c", 1)) for i in range(n)}
    root = write_tree(tmp_path / "in", files)
    manifest, rejects = ingest(tmp_path, root, source_extra={"max_items": 2})
    assert rejects.empty
    assert manifest["label_name"].tolist() == ["a", "b"] and manifest["label"].tolist() == [0, 1]
    kv = pq.read_schema(tmp_path / "out" / "manifest.parquet").metadata
    assert json.loads(kv[b"pipeline3d.class_names"]) == ["a", "b", "c"]
    assert kv[b"pipeline3d.layout"] == b"loose"


# ------------------------------------------------------------------------------------------------ determinism


def _mixed_input(tmp_path: Path) -> Path:
    entries = [file(f"top/{c}/{c}_{i}.off", tetra_off(1.0 + i)) for c in ("cup", "bed", "vase") for i in range(4)]
    entries += [
        file("top/bed/broken.off", garbage_off()),
        file("top/cup/nan.off", nan_off()),
        file("top/cup/x.obj", tetra_obj()),
        file("top/cup/../../evil.off", tetra_off()),
    ]
    return write_tar(tmp_path / "in" / "mixed.tar.gz", entries)


def test_manifest_and_rejects_are_byte_identical_across_runs_and_workers(tmp_path):
    src = _mixed_input(tmp_path)
    ingest(tmp_path, src, out="run1", workers=1)
    ingest(tmp_path, src, out="run2", workers=2)
    for name in ("manifest.parquet", "rejects.parquet"):
        assert (tmp_path / "run1" / name).read_bytes() == (tmp_path / "run2" / name).read_bytes(), name
    with ItemStore(tmp_path / "run1" / "items.h5") as a, ItemStore(tmp_path / "run2" / "items.h5") as b:
        assert a.shape_ids == b.shape_ids and len(a) == 13
        for row in range(len(a)):
            for x, y in zip(a.mesh(row), b.mesh(row)):
                np.testing.assert_array_equal(x, y)
    rejects = pd.read_parquet(tmp_path / "run1" / "rejects.parquet")
    assert sorted(rejects["reason"]) == ["nonfinite", "parse_error", "unsafe_path"]


def test_same_items_from_a_folder_and_from_an_archive(tmp_path):
    files = {f"{c}/train/{c}_{i}.off": tetra_off(1.0 + i) for c in ("cup", "bed") for i in range(3)}
    root = write_tree(tmp_path / "in" / "tree", files)
    src = write_tar(tmp_path / "in" / "tree.tar.gz", [file(f"tree/{k}", v) for k, v in files.items()])
    m_dir, _ = ingest(tmp_path, root, out="from_dir")
    m_tar, _ = ingest(tmp_path, src, out="from_tar")
    cols = ["shape_id", "label", "label_name", "source_split", "sha256", "n_vertices", "n_faces"]
    pd.testing.assert_frame_equal(m_dir[cols], m_tar[cols])


# ------------------------------------------------------------------------------------------------ the stage CLI


def test_cli_end_to_end_with_a_relative_path_and_two_workers(tmp_path):
    src = _mixed_input(tmp_path)
    source = {"kind": "mesh", "format": "auto", "path": os.path.relpath(src, tmp_path)}
    params = {
        "seed": 0,
        "dataset": "mini",
        "source": source,
        "ingest": {
            "max_members": 100,
            "max_total_bytes": 10**9,
            "max_member_bytes": 10**7,
            "max_ratio": 200,
            "max_faces": 10**6,
            "workers": 2,
        },
        "stage_version": 1,
    }
    cmd = [
        sys.executable,
        "-m",
        "pipeline3d.stages.ingest_dataset",
        "--params",
        json.dumps(params),
        "--manifest",
        "res/manifest.parquet",
        "--rejects",
        "res/rejects.parquet",
        "--items",
        "res/items.h5",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = pd.read_parquet(tmp_path / "res" / "manifest.parquet")
    assert len(manifest) == 13 and set(manifest["dataset"]) == {"mini"}
    assert manifest["source"][0].startswith("in/mixed.tar.gz::top/")  # as given, relative to the working dir
    assert "accepted 13 items, rejected 3" in proc.stderr


def test_cli_reports_a_missing_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = {"seed": 0, "dataset": "d", "source": {"kind": "mesh", "path": "nope"}, "ingest": {}, "stage_version": 1}
    args = ["--params", json.dumps(params), "--manifest", "m.parquet", "--rejects", "r.parquet", "--items", "i.h5"]
    assert main(args) == 2
    assert not (tmp_path / "m.parquet").exists()


def test_cli_refuses_a_format_that_does_not_fit_the_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    params = {
        "seed": 0,
        "dataset": "d",
        "source": {"kind": "mesh", "format": "image_tar", "path": "x"},
        "ingest": {},
        "stage_version": 1,
    }
    assert main(["--params", json.dumps(params), "--manifest", "m", "--rejects", "r", "--items", "i"]) == 2


def test_reject_warnings_are_capped_per_reason_with_a_summary(caplog):
    """200k bad members must not mean 200k log lines: the first few per reason, then a count."""
    import logging

    from pipeline3d.data.ingest import REJECTS_LOGGED_PER_REASON, log_rejects
    from pipeline3d.io.rejects import Reject

    many = REJECTS_LOGGED_PER_REASON + 30
    rejects = sorted(
        [Reject(f"a/{i:03d}.off", "parse_error", "bad header") for i in range(many)]
        + [Reject(f"b/{i}.off", "link", "symlink") for i in range(3)]
    )
    with caplog.at_level(logging.WARNING):
        log_rejects(rejects, logging.getLogger("test"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == REJECTS_LOGGED_PER_REASON + 3 + 1
    assert lines[-1] == "... and 30 more parse_error rejects (every reject is in rejects.parquet)"
    assert sum("rejected a/" in line for line in lines) == REJECTS_LOGGED_PER_REASON
