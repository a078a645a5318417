"""Point-cloud h5 ingest: ScanObjectNN variants, ModelNet40-h5 folders, bad files and bad items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hostile import clouds, write_h5
from hostile import ingest_checked as ingest
from pipeline3d.io.h5clouds import SCANOBJECTNN_VARIANTS, scanobjectnn_files, split_of
from pipeline3d.io.itemstore import ItemStore

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
NAMES = ["bag", "bin", "box"]


def scanobjectnn(root: Path, variant: str = "obj_only", n_train: int = 5, n_test: int = 3) -> tuple[Path, dict]:
    arrays = {}
    for path, n, seed in zip(scanobjectnn_files(root, variant), (n_train, n_test), (1, 2)):
        data, label = clouds(n, 16, seed), (np.arange(n) % 3).astype(np.int64)
        write_h5(Path(path), data=data, label=label, mask=np.zeros((n, 16), dtype=np.int64))
        arrays[Path(path).stem] = (data, label)
    return root, arrays


def test_scanobjectnn_variant_files():
    assert set(SCANOBJECTNN_VARIANTS) == {"obj_bg", "obj_only", "pb_t50_rs"}
    assert scanobjectnn_files("r", "obj_bg") == [
        "r/main_split/training_objectdataset.h5",
        "r/main_split/test_objectdataset.h5",
    ]
    assert scanobjectnn_files("r", "obj_only")[0] == "r/main_split_nobg/training_objectdataset.h5"
    assert scanobjectnn_files("r", "pb_t50_rs")[1] == "r/main_split/test_objectdataset_augmentedrot_scale75.h5"
    with pytest.raises(ValueError, match="unknown ScanObjectNN variant"):
        scanobjectnn_files("r", "hardest")
    assert [split_of(p) for p in ("training_x.h5", "ply_data_test0.h5", "data.h5")] == ["train", "test", ""]


def test_scanobjectnn_ids_labels_splits_and_points(tmp_path):
    root, arrays = scanobjectnn(tmp_path / "in")
    # a file of the other variant sits beside it and must not be read
    write_h5(Path(scanobjectnn_files(root, "obj_bg")[0]), data=clouds(2, 16), label=np.zeros(2, dtype=np.int64))
    manifest, rejects = ingest(
        tmp_path,
        root,
        kind="pointcloud",
        fmt="scanobjectnn",
        source_extra={"variant": "obj_only", "class_names": NAMES},
    )
    assert rejects.empty and len(manifest) == 8
    first = manifest.set_index("shape_id").loc["ds/bin/training_objectdataset-000001"]
    assert first["label"] == 1 and first["label_name"] == "bin" and first["source_split"] == "train"
    assert first["n_points"] == 16 and first["format"] == "h5" and json.loads(first["meta"]) == {"h5_index": 1}
    assert first["source"].endswith("main_split_nobg/training_objectdataset.h5::1")
    assert sorted(manifest["source_split"].value_counts().items()) == [("test", 3), ("train", 5)]
    with ItemStore(tmp_path / "out" / "items.h5") as store:
        row = store.row_of("ds/box/test_objectdataset-000002")
        np.testing.assert_array_equal(store.points(row), arrays["test_objectdataset"][0][2])


def test_pointcloud_auto_format_finds_scanobjectnn(tmp_path):
    root, _ = scanobjectnn(tmp_path / "in", variant="obj_bg")
    manifest, _ = ingest(tmp_path, root, kind="pointcloud")
    assert len(manifest) == 8 and manifest["label_name"].str.startswith("class_00").all()


def test_modelnet40_h5_folder_with_shape_names(tmp_path):
    root = tmp_path / "in" / "modelnet40_ply_hdf5_2048"
    write_h5(root / "ply_data_train0.h5", data=clouds(4, 8), label=np.array([[0], [1], [2], [1]], dtype=np.uint8))
    write_h5(root / "ply_data_test0.h5", data=clouds(2, 8).astype(np.float64), label=np.array([2.0, 0.0]))
    write_h5(root / "extra.h5", data=clouds(1, 8), label=np.zeros(1, dtype=np.int64))  # neither train nor test
    (root / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    manifest, rejects = ingest(tmp_path, root.parent, kind="pointcloud", fmt="modelnet40_h5")
    assert len(manifest) == 6
    assert manifest["shape_id"].iloc[0] == "ds/airplane/ply_data_test0-000001"
    assert dict(zip(manifest["label_name"], manifest["label"])) == {"airplane": 0, "bathtub": 1, "bed": 2}
    assert rejects["reason"].tolist() == ["bad_layout"] and rejects["source"][0].endswith("extra.h5")
    import pyarrow.parquet as pq

    kv = pq.read_schema(tmp_path / "out" / "manifest.parquet").metadata
    assert json.loads(kv[b"pipeline3d.class_names"]) == ["airplane", "bathtub", "bed"]


@pytest.mark.parametrize(
    "arrays, reason",
    [
        ({"points": clouds(3, 8), "label": np.zeros(3, dtype=np.int64)}, "missing_keys"),
        ({"data": clouds(3, 8)}, "missing_keys"),
        ({"data": np.zeros((3, 8, 2), np.float32), "label": np.zeros(3, dtype=np.int64)}, "bad_shape"),
        ({"data": np.zeros((3, 8), np.float32), "label": np.zeros(3, dtype=np.int64)}, "bad_shape"),
        ({"data": clouds(3, 8), "label": np.zeros((3, 2), dtype=np.int64)}, "bad_shape"),
        ({"data": clouds(3, 8), "label": np.zeros(4, dtype=np.int64)}, "length_mismatch"),
        ({"data": clouds(3, 8), "label": np.array([0.5, 1, 2])}, "bad_label"),
        ({"data": clouds(3, 8), "label": np.array([b"a", b"b", b"c"])}, "bad_dtype"),
    ],
)
def test_bad_h5_file_is_rejected_and_the_others_ingested(tmp_path, arrays, reason):
    root = tmp_path / "in"
    write_h5(root / "good_train.h5", data=clouds(2, 8), label=np.array([0, 1]))
    write_h5(root / "bad_test.h5", **arrays)
    manifest, rejects = ingest(tmp_path, root, kind="pointcloud", fmt="h5")
    assert manifest["shape_id"].tolist() == ["ds/class_000/good_train-000000", "ds/class_001/good_train-000001"]
    assert rejects["reason"].tolist() == [reason] and rejects["source"][0] == str(root / "bad_test.h5")


def test_unreadable_h5_file(tmp_path):
    root = tmp_path / "in"
    write_h5(root / "good_train.h5", data=clouds(1, 8), label=np.array([0]))
    (root / "broken_test.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    manifest, rejects = ingest(tmp_path, root, kind="pointcloud")
    assert len(manifest) == 1 and rejects["reason"].tolist() == ["unreadable"]


def test_bad_clouds_are_rejected_one_by_one(tmp_path):
    data = clouds(6, 8)
    data[1, 3, 0] = np.nan
    data[2, 0, 2] = np.inf
    data[3] = 0.25  # every point the same
    data[5] *= 1e30  # finite in float32, but squared norms overflow it
    label = np.array([0, 0, 1, 1, 7, 0])
    write_h5(tmp_path / "in" / "scans_train.h5", data=data, label=label)
    manifest, rejects = ingest(
        tmp_path, tmp_path / "in" / "scans_train.h5", kind="pointcloud", source_extra={"class_names": ["a", "b"]}
    )
    assert manifest["shape_id"].tolist() == ["ds/a/scans_train-000000"]
    got = dict(zip(rejects["source"].str.rsplit("::", n=1).str[1], rejects["reason"]))
    assert got == {"1": "nonfinite", "2": "nonfinite", "3": "degenerate", "4": "bad_label", "5": "bad_scale"}


def test_empty_clouds(tmp_path):
    write_h5(tmp_path / "in" / "x_train.h5", data=np.zeros((2, 0, 3), np.float32), label=np.array([0, 1]))
    manifest, rejects = ingest(tmp_path, tmp_path / "in", kind="pointcloud")
    assert manifest.empty and rejects["reason"].tolist() == ["empty", "empty"]


def test_max_items_on_h5_is_stratified(tmp_path):
    write_h5(tmp_path / "in" / "a_train.h5", data=clouds(12, 8), label=np.array([0] * 8 + [1] * 4))
    manifest, _ = ingest(tmp_path, tmp_path / "in", kind="pointcloud", source_extra={"max_items": 3})
    assert sorted(manifest["label"].tolist()) == [0, 0, 1]


@pytest.mark.skipif(not (SHARED / "pointcloud_h5").is_dir(), reason="shared data not available")
def test_real_pointcloud_h5_folders(tmp_path):
    manifest, rejects = ingest(tmp_path, SHARED / "pointcloud_h5" / "ycb_pointclip", kind="pointcloud", fmt="h5")
    assert rejects.empty and len(manifest) == 66
    assert sorted(manifest["source_split"].value_counts().items()) == [("test", 6), ("train", 60)]
    assert set(manifest["label_name"]) == {
        "003_cracker_box",
        "004_sugar_box",
        "005_tomato_soup_can",
        "006_mustard_bottle",
        "009_gelatin_box",
        "010_potted_meat_can",
    }
    assert (manifest["n_points"] == 2048).all()
    shrec, rejects = ingest(
        tmp_path,
        SHARED / "pointcloud_h5" / "shrec07_watertight_2048",
        kind="pointcloud",
        fmt="modelnet40_h5",
        out="out2",
    )
    assert rejects.empty and len(shrec) == 114
    assert shrec.set_index("label")["label_name"].to_dict()[0] == "human"  # shape_names.txt order
