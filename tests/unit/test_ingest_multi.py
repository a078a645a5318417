"""One dataset from several raw sources (``source.path`` as a list): pooled items, one label space, duplicates
across sources, a refused archive among good sources, point-cloud folders, determinism, and the real SHREC'07
folder + extra archive."""

from __future__ import annotations

import collections
import copy
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from hostile import clouds, file, tetra_off, write_h5, write_tar, write_zip
from hostile import ingest_checked as ingest
from pipeline3d.config import ConfigError, validate
from pipeline3d.data.ingest import IngestConfigError, IngestSpec, plan_archives
from pipeline3d.io.itemstore import ItemStore

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "data"

# shape id -> (split, scale): the scale makes every item's payload distinct, so a member read from the wrong
# source (member indices restart at 0 in every source) would show
FOLDER_ITEMS = {"cube/train/cube_1": 1.0, "cube/test/cube_2": 2.0, "tet/train/tet_1": 3.0}
ARCHIVE_ITEMS = {"cube/train/cube_3": 4.0, "tet/test/tet_2": 5.0, "tet/train/tet_3": 6.0, "wedge/train/wedge_1": 7.0}


def write_folder(root: Path, items: dict[str, float]) -> Path:
    for name, scale in items.items():
        (root / f"{name}.off").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.off").write_bytes(tetra_off(scale))
    (root / "README.md").write_text("not an item\n")
    return root


def write_archive(path: Path, items: dict[str, float], top: str = "extra") -> Path:
    entries = [file(f"{top}/{name}.off", tetra_off(scale)) for name, scale in items.items()]
    if path.suffix == ".zip":
        return write_zip(path, entries)
    return write_tar(path, entries)


def check_payloads(store_path: Path, manifest: pd.DataFrame, scales: dict[str, float]) -> None:
    """Every stored mesh is the one its shape id was planned from (the tetra's largest coordinate = its scale)."""
    with ItemStore(store_path) as store:
        for row, sid in enumerate(manifest["shape_id"]):
            vertices, faces = store.mesh(row)
            assert faces.shape == (4, 3) and vertices.max() == pytest.approx(scales[sid]), sid


def ids(items: dict[str, float]) -> dict[str, float]:
    """'cls/split/name' -> 'ds/cls/name'."""
    return {f"ds/{k.split('/')[0]}/{k.split('/')[2]}": v for k, v in items.items()}


# ------------------------------------------------------------------------------------------------ pooling


@pytest.mark.parametrize("second, workers", [("tar.gz", 1), ("tar.gz", 2), ("zip", 1), ("folder", 2)])
def test_two_sources_form_one_dataset(tmp_path, second, workers):
    folder = write_folder(tmp_path / "in" / "main", FOLDER_ITEMS)
    if second == "folder":
        other = write_folder(tmp_path / "in" / "more" / "extra", ARCHIVE_ITEMS)
        prefix = f"{other}/"
    else:
        other = write_archive(tmp_path / "in" / f"more.{second}", ARCHIVE_ITEMS)
        prefix = f"{other}::extra/"
    manifest, rejects = ingest(tmp_path, [folder, other], workers=workers)

    assert rejects.empty
    scales = ids(FOLDER_ITEMS) | ids(ARCHIVE_ITEMS)
    assert manifest["shape_id"].tolist() == sorted(scales)
    # one label space over both sources: 'wedge' exists only in the second one
    assert manifest["label"].tolist() == [["cube", "tet", "wedge"].index(n) for n in manifest["label_name"]]
    splits = {f"ds/{k.split('/')[0]}/{k.split('/')[2]}": k.split("/")[1] for k in {**FOLDER_ITEMS, **ARCHIVE_ITEMS}}
    assert manifest["source_split"].tolist() == [splits[s] for s in manifest["shape_id"]]
    # `source` names the right input: the folder's file path, or archive::member
    for sid, source in zip(manifest["shape_id"], manifest["source"]):
        cls, name = sid.split("/")[1:]
        if sid in ids(FOLDER_ITEMS):
            assert source == f"{folder}/{cls}/{splits[sid]}/{name}.off"
        else:
            assert source == f"{prefix}{cls}/{splits[sid]}/{name}.off"
    check_payloads(tmp_path / "out" / "items.h5", manifest, scales)


def test_layout_is_detected_over_all_sources(tmp_path):
    """The folder alone looks 'loose' (no train/test folder), the archive tells it is ModelNet: one layout for
    the dataset, so the folder's files that do not fit it are bad_layout, not a second label scheme."""
    folder = write_folder(tmp_path / "in" / "main", {"cube/cube_9": 1.0})
    archive = write_archive(tmp_path / "in" / "more.tar.gz", ARCHIVE_ITEMS)
    manifest, rejects = ingest(tmp_path, [folder, archive])
    assert manifest["shape_id"].tolist() == sorted(ids(ARCHIVE_ITEMS))
    assert rejects["reason"].tolist() == ["bad_layout"] and rejects["source"][0] == f"{folder}/cube/cube_9.off"


def test_an_id_in_two_sources_is_rejected_naming_both(tmp_path):
    folder = write_folder(tmp_path / "in" / "main", FOLDER_ITEMS)
    # the same shape id (ds/cube/cube_1), in the other split folder and with other bytes
    archive = write_archive(tmp_path / "in" / "more.tar.gz", {**ARCHIVE_ITEMS, "cube/test/cube_1": 9.0})
    manifest, rejects = ingest(tmp_path, [folder, archive])
    assert manifest["shape_id"].is_unique and len(manifest) == len(FOLDER_ITEMS) + len(ARCHIVE_ITEMS)
    assert rejects["reason"].tolist() == ["duplicate_id"]
    detail = rejects["detail"][0]
    assert "ds/cube/cube_1" in detail and str(folder) in detail and str(archive) in detail
    # the kept one is the first in source order (the folder path sorts before the archive's), not a merge
    kept = manifest.set_index("shape_id").loc["ds/cube/cube_1"]
    assert kept["source"] == f"{folder}/cube/train/cube_1.off" and kept["source_split"] == "train"
    assert rejects["source"][0] == f"{archive}::extra/cube/test/cube_1.off"
    check_payloads(tmp_path / "out" / "items.h5", manifest, ids(FOLDER_ITEMS) | ids(ARCHIVE_ITEMS))

    # which copy wins does not depend on the order of the paths
    manifest2, rejects2 = ingest(tmp_path, [archive, folder], out="reversed")
    pd.testing.assert_frame_equal(manifest, manifest2)
    pd.testing.assert_frame_equal(rejects, rejects2)


def test_a_refused_archive_rejects_only_that_source(tmp_path):
    folder = write_folder(tmp_path / "in" / "main", FOLDER_ITEMS)
    good = write_archive(tmp_path / "in" / "more.zip", ARCHIVE_ITEMS)
    bomb = write_tar(tmp_path / "in" / "bomb.tar.gz", [file("x/cube/train/zeros.off", b"\0" * (8 << 20))])
    junk = tmp_path / "in" / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    manifest, rejects = ingest(tmp_path, [folder, bomb, good, junk])
    assert manifest["shape_id"].tolist() == sorted(ids(FOLDER_ITEMS) | ids(ARCHIVE_ITEMS))
    assert dict(zip(rejects["source"], rejects["reason"])) == {str(bomb): "ratio", str(junk): "bad_archive"}
    check_payloads(tmp_path / "out" / "items.h5", manifest, ids(FOLDER_ITEMS) | ids(ARCHIVE_ITEMS))


def test_all_sources_refused_gives_an_empty_dataset(tmp_path):
    bomb = write_tar(tmp_path / "in" / "bomb.tar.gz", [file("x/zeros.off", b"\0" * (8 << 20))])
    junk = tmp_path / "in" / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 broken")
    manifest, rejects = ingest(tmp_path, [bomb, junk])
    assert manifest.empty and sorted(rejects["reason"]) == ["bad_archive", "ratio"]


def test_a_missing_source_stops_the_ingest(tmp_path):
    folder = write_folder(tmp_path / "in" / "main", FOLDER_ITEMS)
    with pytest.raises(FileNotFoundError, match="nope"):
        ingest(tmp_path, [folder, tmp_path / "in" / "nope.tar.gz"])


def test_max_items_is_stratified_over_all_sources(tmp_path):
    folder = write_folder(tmp_path / "in" / "main", FOLDER_ITEMS)
    archive = write_archive(tmp_path / "in" / "more.tar.gz", ARCHIVE_ITEMS)
    manifest, _ = ingest(tmp_path, [folder, archive], source_extra={"max_items": 3})
    assert sorted(manifest["label_name"]) == ["cube", "tet", "wedge"]  # one per class, 'wedge' from the archive
    assert manifest["label"].tolist() == [["cube", "tet", "wedge"].index(n) for n in manifest["label_name"]]


# ------------------------------------------------------------------------------------------------ determinism


def test_output_is_byte_identical_across_runs_and_path_orders(tmp_path):
    folder = write_folder(tmp_path / "in" / "main", FOLDER_ITEMS)
    archive = write_archive(tmp_path / "in" / "more.tar.gz", {**ARCHIVE_ITEMS, "cube/test/cube_1": 9.0})
    ingest(tmp_path, [folder, archive], out="run1")
    ingest(tmp_path, [folder, archive], out="run2", workers=2)
    ingest(tmp_path, [archive, folder], out="run3")
    for name in ("manifest.parquet", "rejects.parquet"):
        first = (tmp_path / "run1" / name).read_bytes()
        assert first == (tmp_path / "run2" / name).read_bytes() == (tmp_path / "run3" / name).read_bytes(), name
    manifest = pd.read_parquet(tmp_path / "run1" / "manifest.parquet")
    assert manifest["shape_id"].tolist() == sorted(manifest["shape_id"])


# ------------------------------------------------------------------------------------------------ point clouds


def test_h5_folders_are_concatenated(tmp_path):
    a, b = tmp_path / "in" / "part_a", tmp_path / "in" / "part_b"
    write_h5(a / "ply_data_train0.h5", data=clouds(2, 8, seed=1), label=np.array([0, 1]))
    write_h5(b / "ply_data_train1.h5", data=clouds(1, 8, seed=2), label=np.array([1]))
    write_h5(b / "ply_data_test0.h5", data=clouds(1, 8, seed=3), label=np.array([0]))
    (a / "shape_names.txt").write_text("bottle\ncup\n")
    manifest, rejects = ingest(tmp_path, [a, b], kind="pointcloud", fmt="modelnet40_h5")
    assert rejects.empty
    assert manifest["shape_id"].tolist() == [
        "ds/bottle/ply_data_test0-000000",
        "ds/bottle/ply_data_train0-000000",
        "ds/cup/ply_data_train0-000001",
        "ds/cup/ply_data_train1-000000",
    ]
    assert manifest["label"].tolist() == [0, 0, 1, 1]
    assert manifest["source_split"].tolist() == ["test", "train", "train", "train"]
    assert manifest["source"].tolist() == [
        f"{b}/ply_data_test0.h5::0",
        f"{a}/ply_data_train0.h5::0",
        f"{a}/ply_data_train0.h5::1",
        f"{b}/ply_data_train1.h5::0",
    ]
    with ItemStore(tmp_path / "out" / "items.h5") as store:
        np.testing.assert_array_equal(store.points(3), clouds(1, 8, seed=2)[0])


def test_h5_files_with_the_same_name_in_two_folders_are_duplicates(tmp_path):
    a, b = tmp_path / "in" / "a", tmp_path / "in" / "b"
    write_h5(a / "data.h5", data=clouds(1, 8, seed=1), label=np.array([0]))
    write_h5(b / "data.h5", data=clouds(1, 8, seed=2), label=np.array([0]))
    manifest, rejects = ingest(tmp_path, [b, a], kind="pointcloud", fmt="h5")
    assert manifest["source"].tolist() == [f"{a}/data.h5::0"]
    assert rejects["reason"].tolist() == ["duplicate_id"] and rejects["source"][0] == f"{b}/data.h5::0"
    assert str(a) in rejects["detail"][0] and str(b) in rejects["detail"][0]


def test_mixed_pointcloud_layouts_are_a_config_error(tmp_path):
    son = tmp_path / "in" / "son"
    (son / "main_split").mkdir(parents=True)
    plain = write_h5(tmp_path / "in" / "plain.h5", data=clouds(1, 8), label=np.array([0]))
    with pytest.raises(IngestConfigError, match="mixes layouts"):
        ingest(tmp_path, [son, plain], kind="pointcloud")


# ------------------------------------------------------------------------------------------------ config


def test_from_params_accepts_a_path_or_a_list():
    def spec(path):
        return IngestSpec.from_params({"dataset": "d", "source": {"kind": "mesh", "path": path}})

    assert spec("a/b").path == ("a/b",)
    assert spec(["a", "b.zip"]).path == ("a", "b.zip")
    for bad, message in (
        ([], "non-empty list"),
        (["a", ""], "non-empty paths"),
        ([1], "non-empty paths"),
        (["raw/x", "raw/x/"], "same input twice"),
        ({"a": 1}, "non-empty list"),
    ):
        with pytest.raises(IngestConfigError, match=message):
            spec(bad)


def test_schema_takes_a_string_or_a_non_empty_list():
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())

    def with_path(path):
        config = copy.deepcopy(base)
        config["datasets"]["demo-mesh"]["path"] = path
        return validate(config)

    assert with_path(["a.zip", "b.zip"])["datasets"]["demo-mesh"]["path"] == ["a.zip", "b.zip"]
    assert with_path("a.zip")["datasets"]["demo-mesh"]["path"] == "a.zip"
    for bad in ([], ["a.zip", "a.zip"], ["a.zip", 3], [""]):
        with pytest.raises(ConfigError, match="datasets.demo-mesh.path"):
            with_path(bad)


# ------------------------------------------------------------------------------------------------ real data

FOLDER = SHARED / "shrec07_watertight"
ARCHIVE = SHARED / "shrec07_watertight_extra.tar.gz"
needs_shared = pytest.mark.skipif(not (FOLDER.is_dir() and ARCHIVE.is_file()), reason="shared data not available")


@needs_shared
def test_shrec07_folder_and_extra_archive_plan_as_one_dataset():
    spec = IngestSpec.from_params(
        {"dataset": "shrec07", "source": {"kind": "mesh", "path": [str(FOLDER), str(ARCHIVE)]}}
    )
    ignored: collections.Counter = collections.Counter()
    planned, rejects, layout = plan_archives(spec, ignored, logging.getLogger("test"))
    assert layout == "modelnet" and rejects == [] and set(ignored) <= {".md"}
    assert len({p.shape_id for p in planned}) == len(planned) == 19 * 17
    counts = collections.Counter((p.label_name, p.source_split) for p in planned)
    classes = {name for name, _ in counts}
    assert len(classes) == 19
    assert all(counts[(c, "train")] == 12 and counts[(c, "test")] == 5 for c in classes)
    by_origin = collections.Counter(p.origin for p in planned)
    assert by_origin == {str(FOLDER): 19 * 6, str(ARCHIVE): 19 * 11}
    assert all(
        p.source.startswith(f"{ARCHIVE}::shrec07_watertight_extra/") for p in planned if p.origin == str(ARCHIVE)
    )


@needs_shared
def test_shrec07_subset_from_both_sources_is_ingested(tmp_path):
    manifest, rejects = ingest(tmp_path, [FOLDER, ARCHIVE], source_extra={"max_items": 19}, workers=2)
    assert rejects.empty and len(manifest) == 19 and manifest["label_name"].nunique() == 19
    assert manifest["label"].tolist() == list(range(19))
    from_archive = manifest["source"].str.startswith(f"{ARCHIVE}::shrec07_watertight_extra/")
    from_folder = manifest["source"].str.startswith(f"{FOLDER}/")
    assert from_archive.any() and from_folder.any() and (from_archive ^ from_folder).all()  # both sources used
    for _, row in manifest.iterrows():
        cls, split, name = row["source"].replace("::", "/").split("/")[-3:]
        assert (row["label_name"], row["source_split"], row["shape_id"]) == (cls, split, f"ds/{cls}/{name[:-4]}")
