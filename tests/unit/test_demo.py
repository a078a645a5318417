"""The demo data generator: shapes, archive layouts, scans, depth images, determinism, stage CLI."""

import io
import json
import re
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy.spatial import cKDTree

from pipeline3d.config import stage_params
from pipeline3d.data.demo import (
    DemoConfig,
    DemoConfigError,
    archive_models,
    caption,
    make_scan,
    model_mesh,
    resample_points,
    scan_models,
    write_demo,
)
from pipeline3d.data.demo_shapes import KNOWN_CLASSES, UnknownClassError, check_mesh, make_shape
from pipeline3d.data.render import depth_image, framing_camera, orbit_position
from pipeline3d.rng import rng_for
from pipeline3d.stages.make_demo_data import main as stage_main

PARAMS = {
    "seed": 0,
    "enabled": True,
    "out_dir": "unused",
    "classes": ["bottle", "table", "mug"],
    "train_per_class": 1,
    "test_per_class": 1,
    "scans_per_class": 3,
    "scan_points": 128,
    "image_views": 2,
    "image_size": 24,
    "duplicate_fraction": 0.5,
    "stage_version": 1,
}
OUTPUTS = {
    "meshes": "demo_meshes.tar.gz",
    "scans_train": "demo_scans/main_split_nobg/training_objectdataset.h5",
    "scans_test": "demo_scans/main_split_nobg/test_objectdataset.h5",
    "images": "demo_images.tar",
}
MEMBER = re.compile(r"^([a-z_]+)/([0-9a-f]{32})/models/model_normalized\.obj$")


def config(**overrides) -> DemoConfig:
    return DemoConfig.from_params({**PARAMS, **overrides})


def generate(folder: Path, cfg: DemoConfig) -> dict[str, Path]:
    paths = {key: folder / name for key, name in OUTPUTS.items()}
    write_demo(cfg, paths["meshes"], paths["scans_train"], paths["scans_test"], paths["images"])
    return paths


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    return generate(tmp_path_factory.mktemp("demo"), config())


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def h5_arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        return {key: h5[key][()] for key in h5}


def surface_sample(mesh: trimesh.Trimesh, n: int, rng: np.random.Generator) -> np.ndarray:
    """Area-weighted uniform surface points (own sampler: trimesh's ignores numpy seeding)."""
    area = mesh.area_faces
    faces = rng.choice(len(area), n, p=area / area.sum())
    u = rng.random((n, 2))
    u[u.sum(axis=1) > 1] = 1 - u[u.sum(axis=1) > 1]
    tri = mesh.triangles[faces]
    return tri[:, 0] + u[:, :1] * (tri[:, 1] - tri[:, 0]) + u[:, 1:] * (tri[:, 2] - tri[:, 0])


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("cls", KNOWN_CLASSES)
def test_every_generator_gives_a_valid_normalised_mesh(cls):
    for key in ("a", "b"):
        mesh = make_shape(cls, rng_for(0, "make_demo_data", f"{cls}/{key}"))
        check_mesh(mesh, cls)  # finite, in range, no degenerate faces
        assert 60 <= len(mesh.faces) <= 5000
        lo, hi = mesh.bounds
        assert np.allclose((lo + hi) / 2, 0, atol=1e-5) and np.linalg.norm(hi - lo) == pytest.approx(1, abs=1e-5)


def test_generators_vary_their_proportions():
    a, b = (make_shape("chair", rng_for(0, "make_demo_data", key)) for key in ("x", "y"))
    assert not np.allclose(a.extents, b.extents, atol=1e-3)


def test_class_shapes_have_their_characteristic_proportions():
    def ratio(cls):  # height (Y up) over the larger horizontal extent, over a few instances
        ext = np.array([make_shape(cls, rng_for(3, "make_demo_data", f"{cls}{i}")).extents for i in range(5)])
        return ext[:, 1] / ext[:, [0, 2]].max(axis=1)

    assert (ratio("bottle") > 1.5).all() and (ratio("lamp") > 1.0).all() and (ratio("chair") > 1.2).all()
    assert (ratio("table") < 0.9).all() and (ratio("bowl") < 0.5).all() and (ratio("airplane") < 0.4).all()
    assert (ratio("car") < 0.6).all() and (ratio("bed") < 0.7).all()


def test_unknown_class_is_refused_by_name():
    with pytest.raises(UnknownClassError, match=r"'sofa'.*known classes: chair, table"):
        config(classes=["chair", "sofa"])
    with pytest.raises(DemoConfigError, match="demo.image_views"):
        config(image_views=0)
    with pytest.raises(DemoConfigError, match="scan_points"):
        DemoConfig.from_params({k: v for k, v in PARAMS.items() if k != "scan_points"})


# ---------------------------------------------------------------------------------------------- determinism


def test_same_config_gives_identical_bytes_and_another_seed_differs(demo, tmp_path):
    again = generate(tmp_path / "again", config())
    for key in OUTPUTS:
        assert again[key].read_bytes() == demo[key].read_bytes(), key
    other = generate(tmp_path / "other", config(seed=1))
    for key in ("meshes", "images"):
        assert other[key].read_bytes() != demo[key].read_bytes(), key
    for key in ("scans_train", "scans_test"):
        assert not np.array_equal(h5_arrays(other[key])["data"], h5_arrays(demo[key])["data"])


def test_a_models_data_do_not_depend_on_what_else_is_generated(demo, tmp_path):
    # another class order (labels move), one class dropped, more models and scans per class
    bigger = generate(
        tmp_path / "bigger", config(classes=["mug", "bottle"], train_per_class=3, test_per_class=2, scans_per_class=5)
    )
    # which models get a near-duplicate may change with the counts, but every id keeps its bytes
    base = {s.member for s in archive_models(config()) if not s.duplicate_of and s.class_name != "table"}
    small, big = tar_members(demo["meshes"]), tar_members(bigger["meshes"])
    shared = set(small) & set(big)
    assert base <= shared and all(big[name] == small[name] for name in shared)
    small_img, big_img = tar_members(demo["images"]), tar_members(bigger["images"])
    shared = set(small_img) & set(big_img)
    assert len(shared) >= 2 * 2 * len(base) and all(big_img[name] == small_img[name] for name in shared)
    cfg_small = config()
    cfg_big = config(classes=["mug", "bottle"], train_per_class=3, test_per_class=2, scans_per_class=5)
    spec_small = next(s for s in scan_models(cfg_small) if s.class_name == "mug")
    spec_big = next(s for s in scan_models(cfg_big) if s.model_id == spec_small.model_id)
    assert (spec_small.label, spec_big.label) == (2, 0)
    assert np.array_equal(make_scan(cfg_small, spec_small).points, make_scan(cfg_big, spec_big).points)


# ---------------------------------------------------------------------------------------------- mesh archive


def test_mesh_archive_layout_and_reproducible_headers(demo):
    raw = demo["meshes"].read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip, header mtime 0
    assert not raw[3] & 0x08  # no file name in the gzip header
    with tarfile.open(demo["meshes"]) as tar:
        infos = tar.getmembers()
    names = [m.name for m in infos]
    assert names == sorted(names)
    assert all(m.isfile() and m.mtime == 0 and m.uid == m.gid == 0 and m.mode == 0o644 for m in infos)
    per_class = {}
    for name in names:
        match = MEMBER.match(name)
        assert match, name
        per_class[match.group(1)] = per_class.get(match.group(1), 0) + 1
    # 1 train + 1 test per class, and round(0.5 * 2) = 1 near-duplicate each
    assert per_class == {"bottle": 3, "table": 3, "mug": 3}
    specs = archive_models(config())
    assert sorted(s.member for s in specs) == names


def test_obj_round_trip_matches_the_generated_mesh(demo):
    members = tar_members(demo["meshes"])
    cfg = config()
    for spec in archive_models(cfg)[:3]:
        loaded = trimesh.load(io.BytesIO(members[spec.member]), file_type="obj", process=False)
        mesh = model_mesh(cfg, spec)
        assert np.array_equal(loaded.faces, mesh.faces)
        assert np.allclose(loaded.vertices, mesh.vertices, atol=1e-9)


def test_near_duplicates_are_jittered_copies_with_their_own_id():
    cfg = config()
    specs = archive_models(cfg)
    dups = [s for s in specs if s.duplicate_of]
    assert len(dups) == 3
    by_id = {s.model_id: s for s in specs}
    for dup in dups:
        source = by_id[dup.duplicate_of]
        assert dup.model_id != source.model_id and dup.class_name == source.class_name
        a, b = model_mesh(cfg, source), model_mesh(cfg, dup)
        assert np.array_equal(a.faces, b.faces)
        shift = np.linalg.norm(a.vertices - b.vertices, axis=1)
        assert 0 < shift.mean() < 0.01  # moved, but only a tiny bit (bbox diagonal 1)


# ---------------------------------------------------------------------------------------------- scans


def test_scan_files_have_the_scanobjectnn_layout(demo):
    for key, per_class in (("scans_train", 2), ("scans_test", 1)):
        arrays = h5_arrays(demo[key])
        assert set(arrays) == {"data", "label", "mask"}
        data, label, mask = arrays["data"], arrays["label"], arrays["mask"]
        n = 3 * per_class
        assert data.shape == (n, 128, 3) and data.dtype == np.float32
        assert label.shape == (n,) and label.dtype == np.int64 and mask.shape == (n, 128) and mask.dtype == np.int64
        assert np.bincount(label, minlength=3).tolist() == [per_class] * 3  # index into [bottle, table, mug]
        assert (mask == 1).all()
        assert np.allclose(data.mean(axis=1), 0, atol=1e-5)
        assert np.allclose(np.linalg.norm(data, axis=2).max(axis=1), 1, atol=1e-5)
    # label names ship beside the scans, in label order, so ingest needs no class list in the config
    names = (demo["scans_train"].parent / "shape_names.txt").read_text().split()
    assert names == ["bottle", "table", "mug"]


def test_ingest_names_the_demo_scan_labels_without_a_class_list(demo, tmp_path):
    from pipeline3d.data.ingest import run_ingest

    root = demo["scans_train"].parents[1]
    params = {
        "seed": 0,
        "dataset": "scan",
        "stage_version": 1,
        "source": {"kind": "pointcloud", "format": "scanobjectnn", "variant": "obj_only", "path": str(root)},
        "ingest": {
            "max_members": 100,
            "max_total_bytes": 10**9,
            "max_member_bytes": 10**9,
            "max_ratio": 200,
            "max_faces": 10**6,
            "workers": 1,
        },
    }
    run_ingest(params, tmp_path / "m.parquet", tmp_path / "r.parquet", tmp_path / "i.h5")
    import pandas as pd

    manifest = pd.read_parquet(tmp_path / "m.parquet")
    assert set(manifest["label_name"]) == {"bottle", "table", "mug"}
    for _, row in manifest.iterrows():
        assert ["bottle", "table", "mug"][row["label"]] == row["label_name"]


def test_scans_are_held_out_instances():
    cfg = config()
    archive_ids = {s.model_id for s in archive_models(cfg)}
    scans = scan_models(cfg)
    assert len(scans) == 9 and not archive_ids & {s.model_id for s in scans}
    assert [s.split for s in scans if s.class_name == "mug"] == ["train", "train", "test"]


def test_scans_are_partial_noisy_views_of_the_true_surface():
    cfg = config()
    directions = orbit_unit_directions(64)
    ratios = []
    for spec in scan_models(cfg):
        scan = make_scan(cfg, spec)
        points = scan.points.astype(np.float64)
        rng = np.random.default_rng(0)
        dense, full = surface_sample(scan.mesh, 4000, rng), surface_sample(scan.mesh, len(points), rng)
        # near the surface: sensor noise is < 1 % of the object, occluders remove points, they add none
        distance = trimesh.proximity.closest_point(scan.mesh, points)[1]
        assert np.median(distance) < 0.02 and distance.max() < 0.08
        # partial: a scan covers clearly less of the surface than a full sample of the same size
        covered = cKDTree(points).query(dense)[0] < 0.1
        covered_full = cKDTree(full).query(dense)[0] < 0.1
        assert covered.mean() < covered_full.mean() - 0.05
        # and clearly fewer of the directions seen from the centre of the bounding box
        centre = scan.mesh.bounding_box.centroid
        ratios.append(direction_coverage(points, centre, directions) / direction_coverage(full, centre, directions))
    assert np.mean(ratios) < 0.85


def orbit_unit_directions(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(azimuth) * np.sin(polar), np.cos(polar), np.sin(azimuth) * np.sin(polar)], axis=1)


def direction_coverage(points: np.ndarray, centre: np.ndarray, directions: np.ndarray) -> float:
    d = points - centre
    nearest = (d / np.linalg.norm(d, axis=1, keepdims=True) @ directions.T).argmax(axis=1)
    return len(np.unique(nearest)) / len(directions)


def test_resample_gives_exactly_n_points_from_the_input():
    points = np.arange(30, dtype=np.float64).reshape(10, 3)
    rng = np.random.default_rng(0)
    fewer = resample_points(points, 4, rng)
    assert fewer.shape == (4, 3) and len(np.unique(fewer[:, 0])) == 4
    more = resample_points(points, 25, rng)
    assert more.shape == (25, 3) and set(more[:, 0]) == set(points[:, 0])  # every point kept, some repeated


# ---------------------------------------------------------------------------------------------- images


def test_image_archive_pairs_and_metadata(demo):
    members = tar_members(demo["images"])
    assert list(members) == sorted(members)
    keys = {name.rsplit(".", 1)[0] for name in members}
    assert set(members) == {f"{k}.{ext}" for k in keys for ext in ("png", "json")}
    specs = archive_models(config())
    assert keys == {s.image_key(v) for s in specs for v in range(2)}
    for spec in specs:
        for view in range(2):
            key = spec.image_key(view)
            meta = json.loads(members[f"{key}.json"])
            assert meta == {
                "label": spec.class_name,
                "caption": f"a depth image of a {spec.class_name}",
                "shape": f"{spec.class_name}/{spec.model_id}",
                "view": view,
                "split": "",
            }
            image = Image.open(io.BytesIO(members[f"{key}.png"]))
            assert image.mode == "L" and image.size == (24, 24)
            pixels = np.asarray(image)
            assert pixels[0, 0] == 0 and (pixels > 0).sum() > 10  # background 0 at the corner, the object visible
    assert caption("airplane") == "a depth image of an airplane"


def test_duplicates_are_rendered_from_their_sources_viewpoints(demo):
    members = tar_members(demo["images"])
    for dup in (s for s in archive_models(config()) if s.duplicate_of):
        source_key = f"{dup.class_name}__{dup.duplicate_of}__v0.png"
        a = np.asarray(Image.open(io.BytesIO(members[source_key]))).astype(int)
        b = np.asarray(Image.open(io.BytesIO(members[f"{dup.image_key(0)}.png"]))).astype(int)
        assert ((a > 0) == (b > 0)).mean() > 0.9 and np.abs(a - b).mean() < 10


def test_depth_image_nearer_is_brighter():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    camera = framing_camera(orbit_position(0.3, 0.4, 1.5), 0.5, 33)
    image = depth_image(sphere, camera, near=1.0, far=2.0).astype(int)
    assert image[0, 0] == 0 and image[16, 16] == image.max() and image[16, 16] >= 250
    row = image[16, 16:]
    lit = row[row > 0]
    assert len(lit) > 5 and (np.diff(lit) <= 0).all()  # farther from the centre of the sphere = deeper = darker


# ---------------------------------------------------------------------------------------------- stage


def test_stage_writes_the_rule_outputs(tmp_path):
    args = [
        "--meshes",
        str(tmp_path / OUTPUTS["meshes"]),
        "--scans-train",
        str(tmp_path / OUTPUTS["scans_train"]),
        "--scans-test",
        str(tmp_path / OUTPUTS["scans_test"]),
        "--images",
        str(tmp_path / OUTPUTS["images"]),
    ]
    cfg = {k: v for k, v in PARAMS.items() if k != "stage_version"}
    cfg.update(classes=["bowl", "car"], scans_per_class=2, image_views=1)
    assert stage_main(["--params", stage_params("make_demo_data", cfg), *args]) == 0
    for name in OUTPUTS.values():
        assert (tmp_path / name).stat().st_size > 0
    assert h5_arrays(tmp_path / OUTPUTS["scans_test"])["label"].tolist() == [0, 1]


def test_stage_refuses_an_unknown_class_and_writes_nothing(tmp_path, capsys):
    cfg = {**PARAMS, "classes": ["chair", "spaceship"]}
    args = [
        "--meshes",
        str(tmp_path / "m.tar.gz"),
        "--scans-train",
        str(tmp_path / "a.h5"),
        "--scans-test",
        str(tmp_path / "b.h5"),
        "--images",
        str(tmp_path / "i.tar"),
    ]
    assert stage_main(["--params", json.dumps(cfg), *args]) == 1
    assert "'spaceship'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_rendering_many_meshes_that_stay_alive_does_not_crash():
    # the generator holds every mesh while it renders images and scans; a ray intersector cached on each of them
    # kept one Embree scene per mesh alive, and at ~1000 meshes (demo.train_per_class 100) the process segfaulted
    camera = framing_camera(np.array([0.0, 0.0, 3.0]), 1.0, size=4)
    meshes = [trimesh.creation.box(extents=(1.0, 1.0, 0.5 + i * 1e-4)) for i in range(1500)]
    images = [depth_image(mesh, camera, near=1.0, far=5.0) for mesh in meshes]
    assert all(image.shape == (4, 4) and image.max() > 0 for image in images)
