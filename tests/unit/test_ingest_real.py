"""Ingest of the real shared meshes: the shrec07_watertight folder and the extra archive, read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile import ingest_checked as ingest
from pipeline3d.io.itemstore import ItemStore

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
FOLDER = SHARED / "shrec07_watertight"
ARCHIVE = SHARED / "shrec07_watertight_extra.tar.gz"
CLASSES = sorted(
    [
        "human",
        "cup",
        "glasses",
        "airplane",
        "ant",
        "chair",
        "octopus",
        "table",
        "teddy",
        "hand",
        "plier",
        "fish",
        "bird",
        "armadillo",
        "bust",
        "mech",
        "bearing",
        "vase",
        "fourleg",
    ]
)

needs_folder = pytest.mark.skipif(not FOLDER.is_dir(), reason="shared data not available")
needs_archive = pytest.mark.skipif(not ARCHIVE.is_file(), reason="shared data not available")


def check_labels_and_splits(manifest, root_marker: str) -> None:
    for _, row in manifest.iterrows():
        cls, split, name = row["source"].split(root_marker, 1)[1].split("/")[-3:]
        assert row["label_name"] == cls and row["label"] == CLASSES.index(cls)
        assert row["source_split"] == split
        assert row["shape_id"] == f"ds/{cls}/{Path(name).stem}"


@needs_folder
def test_shrec07_folder_subset_has_the_right_labels_and_splits(tmp_path):
    manifest, rejects = ingest(tmp_path, FOLDER, source_extra={"max_items": 38})
    assert rejects.empty and len(manifest) == 38
    assert manifest["label_name"].value_counts().eq(2).all() and manifest["label_name"].nunique() == 19
    check_labels_and_splits(manifest, "shrec07_watertight/")
    assert set(manifest["source_split"]) <= {"train", "test"} and manifest["format"].eq("off").all()
    # watertight triangle meshes: the stored mesh is the file's mesh
    row = manifest.iloc[0]
    header = Path(row["source"]).read_bytes()[:64].split()
    assert header[0] == b"OFF" and (int(header[1]), int(header[2])) == (row["n_vertices"], row["n_faces"])
    with ItemStore(tmp_path / "out" / "items.h5") as store:
        v, f = store.mesh(0)
        assert v.shape == (row["n_vertices"], 3) and f.shape == (row["n_faces"], 3)


@needs_archive
def test_shrec07_extra_archive_subset_is_ingested_in_place(tmp_path):
    manifest, rejects = ingest(tmp_path, ARCHIVE, source_extra={"max_items": 19}, workers=2)
    assert rejects.empty and len(manifest) == 19 and manifest["label_name"].nunique() == 19
    assert manifest["source"].str.startswith(f"{ARCHIVE}::shrec07_watertight_extra/").all()
    check_labels_and_splits(manifest, "::")


@needs_archive
@pytest.mark.slow
def test_shrec07_extra_archive_is_ingested_in_place(tmp_path):
    manifest, rejects = ingest(tmp_path, ARCHIVE, workers=2)
    assert manifest["source"].str.startswith(f"{ARCHIVE}::shrec07_watertight_extra/").all()
    assert rejects.empty and len(manifest) == 209
    counts = manifest.groupby(["label_name", "source_split"]).size().unstack()
    assert set(counts.index) == set(CLASSES)
    assert (counts["train"] == 8).all() and (counts["test"] == 3).all()
    check_labels_and_splits(manifest, "::")
