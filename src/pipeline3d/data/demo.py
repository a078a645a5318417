"""The demo data set: procedurally generated meshes, partial scans and depth images, in real-world layouts.

Three archives mimic the data sets the pipeline is built for, so the demo exercises the real ingest paths:

* ``demo_meshes.tar.gz``: ShapeNetCore.v2 layout ``<class>/<model_id>/models/model_normalized.obj`` (the class
  name stands in for the synset; like ShapeNet, no split is encoded). A ``duplicate_fraction`` of the models get a
  near-duplicate sibling (same parameters, tiny vertex jitter, its own id) so de-duplication has work to do.
* ``training/test_objectdataset.h5``: ScanObjectNN OBJ-ONLY layout (``data``, ``label``, ``mask``) of partial, noisy,
  occluded scans of held-out instances (model ids not in the mesh archive).
* ``demo_images.tar``: ``<key>.png`` depth views of every archive model with ``<key>.json`` metadata. A duplicate is
  rendered from its source's viewpoints, so the image set holds near-duplicates too.

Model ids look like ShapeNet's (32 hex digits) and are a hash of (class, role, index), so the id of the n-th model of
a class never depends on the seed, the class list or the counts; the shape behind an id is drawn from
``rng_for(seed, STAGE, model_id)`` alone (a duplicate: its source's id, then its own id for the jitter). All bytes are
a function of the config: sorted archive members with zeroed metadata, gzip header without time or name, HDF5
without timestamps.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import h5py
import numpy as np
import trimesh
from PIL import Image

from ..io.atomic import atomic_path, write_text
from ..io.h5clouds import CLASS_NAMES_FILE
from ..log import Progress
from ..rng import rng_for
from .demo_shapes import check_classes, jittered, make_shape
from .render import PinholeCamera, depth_image, framing_camera, orbit_position, visible_surface

STAGE = "make_demo_data"
BOUND_RADIUS = 0.5  # every normalised mesh (bbox diagonal 1, centred) fits in this ball
DUPLICATE_SIGMA = 0.002  # vertex jitter of a near-duplicate, in bbox diagonals
IMAGE_DISTANCE = 2.2 * BOUND_RADIUS  # depth-image camera distance (fixed: all objects at the same scale)
IMAGE_ELEVATION = (0.15, 0.70)  # radians above the horizon
SCAN_DISTANCE = (1.1, 1.6)  # depth-sensor distance range
SCAN_ELEVATION = (0.10, 0.90)
SCAN_NOISE = (0.002, 0.006)  # Gaussian sensor noise sigma range, in bbox diagonals
SCAN_RAYS_PER_POINT = 6  # pixels cast per requested point (only a part of the frame shows the object)
SCAN_MIN_KEPT = 0.4  # an occluder never removes more than 60 % of the visible points
MESH_MEMBER = "{cls}/{model_id}/models/model_normalized.obj"


class DemoConfigError(ValueError):
    """A bad demo config value; the message names the key."""


@dataclass(frozen=True)
class DemoConfig:
    seed: int
    classes: tuple[str, ...]
    train_per_class: int
    test_per_class: int
    scans_per_class: int
    scan_points: int
    image_views: int
    image_size: int
    duplicate_fraction: float

    @classmethod
    def from_params(cls, params: dict) -> DemoConfig:
        """Build from the stage params (``seed`` + the config ``demo`` section); other keys are ignored."""
        ints = {
            "seed": 0,
            "train_per_class": 1,
            "test_per_class": 1,
            "scans_per_class": 1,
            "scan_points": 16,
            "image_views": 1,
            "image_size": 8,
        }
        missing = sorted({*ints, "classes", "duplicate_fraction"} - set(params))
        if missing:
            raise DemoConfigError(f"demo params lack {', '.join(missing)}")
        values = {}
        for key, minimum in ints.items():
            value = params[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise DemoConfigError(f"demo.{key}: expected an integer >= {minimum}, got {value!r}")
            values[key] = value
        classes = params["classes"]
        if (
            not isinstance(classes, list)
            or not classes
            or not all(isinstance(c, str) for c in classes)
            or len(set(classes)) != len(classes)
        ):
            raise DemoConfigError(f"demo.classes: expected a non-empty list of distinct names, got {classes!r}")
        check_classes(classes)
        fraction = params["duplicate_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise DemoConfigError(f"demo.duplicate_fraction: expected a number in [0, 1], got {fraction!r}")
        return cls(classes=tuple(classes), duplicate_fraction=float(fraction), **values)


@dataclass(frozen=True)
class ModelSpec:
    """One generated object: its class, id and the id its shape parameters are drawn with."""

    class_name: str
    model_id: str
    shape_key: str  # == model_id, except for a near-duplicate: the id of its source
    label: int  # index of the class in the config class list
    split: str = ""  # scans only: 'train' or 'test'

    @property
    def duplicate_of(self) -> str | None:
        return self.shape_key if self.shape_key != self.model_id else None

    @property
    def member(self) -> str:
        return MESH_MEMBER.format(cls=self.class_name, model_id=self.model_id)

    def image_key(self, view: int) -> str:
        return f"{self.class_name}__{self.model_id}__v{view}"


def model_id(class_name: str, role: str, index: int) -> str:
    """A ShapeNet-looking id (32 hex digits) for the ``index``-th model of ``role`` (mesh, duplicate, scan)."""
    return hashlib.sha256(f"pipeline3d-demo/{class_name}/{role}/{index}".encode()).hexdigest()[:32]


def _n_duplicates(cfg: DemoConfig) -> int:
    return math.floor(cfg.duplicate_fraction * (cfg.train_per_class + cfg.test_per_class) + 0.5)


def archive_models(cfg: DemoConfig) -> list[ModelSpec]:
    """The mesh-archive models, class by class (config order), sources before their duplicates.

    Which models get a duplicate is decided by a per-model draw (the lowest ranks win), not by position.
    """
    specs = []
    n_models = cfg.train_per_class + cfg.test_per_class
    for label, cls in enumerate(cfg.classes):
        base = [ModelSpec(cls, mid, mid, label) for mid in (model_id(cls, "mesh", i) for i in range(n_models))]
        rank = {i: rng_for(cfg.seed, STAGE, f"{spec.model_id}:duplicate").random() for i, spec in enumerate(base)}
        chosen = sorted(sorted(rank, key=rank.__getitem__)[: _n_duplicates(cfg)])
        specs += base
        specs += [ModelSpec(cls, model_id(cls, "duplicate", i), base[i].model_id, label) for i in chosen]
    return specs


def scan_models(cfg: DemoConfig) -> list[ModelSpec]:
    """The held-out scanned instances; about two thirds of each class go to 'train', the rest to 'test'."""
    n = cfg.scans_per_class
    n_test = max(1, math.floor(n / 3 + 0.5)) if n >= 2 else 0
    return [
        ModelSpec(cls, mid, mid, label, "train" if i < n - n_test else "test")
        for label, cls in enumerate(cfg.classes)
        for i, mid in enumerate(model_id(cls, "scan", j) for j in range(n))
    ]


def model_mesh(cfg: DemoConfig, spec: ModelSpec) -> trimesh.Trimesh:
    """The mesh of one model: a function of (seed, class, shape key, model id) only."""
    mesh = make_shape(spec.class_name, rng_for(cfg.seed, STAGE, spec.shape_key))
    if spec.duplicate_of is not None:
        mesh = jittered(mesh, rng_for(cfg.seed, STAGE, f"{spec.model_id}:jitter"), DUPLICATE_SIGMA)
    return mesh


# ---------------------------------------------------------------------------------------------- writers


def obj_text(mesh: trimesh.Trimesh, comment: str = "") -> str:
    """Wavefront OBJ with a fixed float format (6 decimals) and 1-based triangle faces."""
    lines = [f"# {comment}"] if comment else []
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in np.asarray(mesh.vertices, dtype=np.float64).tolist()]
    lines += [f"f {a} {b} {c}" for a, b, c in (np.asarray(mesh.faces, dtype=np.int64) + 1).tolist()]
    return "\n".join(lines) + "\n"


def write_tar(fileobj: BinaryIO, members: Iterable[tuple[str, Callable[[], bytes]]]) -> int:
    """Write a reproducible tar: members in name order, mtime 0, uid/gid 0, no owner names, mode 0644.

    ``members`` are (name, producer) pairs; each producer is called when its member is written, so the contents
    need not all be in memory at once. Returns the number of members.
    """
    count = 0
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, produce in sorted(members, key=lambda item: item[0]):
            data = produce()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
            count += 1
    return count


def write_mesh_archive(path: str | Path, specs: list[ModelSpec], meshes: dict[str, trimesh.Trimesh]) -> int:
    """The ShapeNet-layout .tar.gz of ``meshes`` (model id -> mesh), written atomically; returns the member count."""
    by_id = {s.model_id: s for s in specs}

    def producer(mid: str) -> Callable[[], bytes]:
        return lambda: obj_text(meshes[mid], f"pipeline3d demo {by_id[mid].class_name}").encode("ascii")

    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        # filename="" and mtime=0 keep the temporary name and the clock out of the gzip header
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            return write_tar(gz, [(by_id[mid].member, producer(mid)) for mid in meshes])


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def view_cameras(cfg: DemoConfig, spec: ModelSpec) -> list[PinholeCamera]:
    """The depth-image cameras of a model: spread around it from a random start, elevated, same distance.

    Drawn with the shape key, so a near-duplicate is seen from its source's viewpoints.
    """
    rng = rng_for(cfg.seed, STAGE, f"{spec.shape_key}:views")
    start = rng.uniform(0.0, 2 * np.pi)
    cameras = []
    for view in range(cfg.image_views):
        azimuth = start + 2 * np.pi * view / cfg.image_views + rng.uniform(-0.2, 0.2)
        eye = orbit_position(azimuth, rng.uniform(*IMAGE_ELEVATION), IMAGE_DISTANCE)
        cameras.append(framing_camera(eye, BOUND_RADIUS, cfg.image_size))
    return cameras


def render_views(cfg: DemoConfig, spec: ModelSpec, mesh: trimesh.Trimesh) -> list[np.ndarray]:
    """``image_views`` 8-bit depth images of one model (nearer is brighter, background 0)."""
    near, far = IMAGE_DISTANCE - BOUND_RADIUS, IMAGE_DISTANCE + BOUND_RADIUS
    return [depth_image(mesh, camera, near, far) for camera in view_cameras(cfg, spec)]


def caption(class_name: str) -> str:
    noun = class_name.replace("_", " ")
    return f"a depth image of {'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def image_metadata(spec: ModelSpec, view: int) -> dict:
    """The JSON beside each PNG (the fields an image-text data set carries; ShapeNet-style shape reference)."""
    return {
        "label": spec.class_name,
        "caption": caption(spec.class_name),
        "shape": f"{spec.class_name}/{spec.model_id}",
        "view": view,
        "split": "",
    }


def write_image_archive(
    path: str | Path,
    cfg: DemoConfig,
    specs: list[ModelSpec],
    meshes: dict[str, trimesh.Trimesh],
    progress: Progress | None = None,
) -> int:
    """The uncompressed tar of ``<key>.png`` + ``<key>.json`` pairs, written atomically; returns the image count."""
    members: list[tuple[str, Callable[[], bytes]]] = []
    for spec in specs:
        for view, image in enumerate(render_views(cfg, spec, meshes[spec.model_id])):
            key = spec.image_key(view)
            meta = json.dumps(image_metadata(spec, view), sort_keys=True) + "\n"
            members.append((f"{key}.png", lambda data=png_bytes(image): data))
            members.append((f"{key}.json", lambda data=meta.encode("utf-8"): data))
        if progress is not None:
            progress.step()
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        return write_tar(raw, members) // 2


# ---------------------------------------------------------------------------------------------- scans


@dataclass(frozen=True)
class Scan:
    points: np.ndarray  # (scan_points, 3) float32, centred on the mean, max norm 1
    mesh: trimesh.Trimesh  # the scanned mesh moved into the same frame as the points


def _occlude(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Drop the points inside a random blob (sphere) or slab, as a foreground object or a sensor gap would.

    The occluder shrinks until at least SCAN_MIN_KEPT of the points survive.
    """
    centre = points[rng.integers(len(points))]
    if rng.random() < 0.6:
        size = rng.uniform(0.08, 0.18)
        distance = np.linalg.norm(points - centre, axis=1)
    else:
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        size = rng.uniform(0.03, 0.08)
        distance = np.abs((points - centre) @ normal)
    for _ in range(6):
        keep = distance > size
        if keep.mean() >= SCAN_MIN_KEPT:
            return points[keep]
        size *= 0.7
    return points


def resample_points(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``n`` points: a random subset, or all points plus random repeats when there are too few."""
    if len(points) >= n:
        return points[rng.choice(len(points), n, replace=False)]
    extra = rng.choice(len(points), n - len(points), replace=True)
    return points[rng.permutation(np.concatenate([np.arange(len(points)), extra]))]


def make_scan(cfg: DemoConfig, spec: ModelSpec) -> Scan:
    """A ScanObjectNN-like partial scan of one model.

    A depth sensor at a random elevated viewpoint sees part of the surface (Embree first hits of jittered pixel
    rays), Gaussian noise is added, a random occluder removes a region, the points are resampled to exactly
    ``scan_points``, turned by a random yaw about the up axis (scans are not aligned) and normalised like
    ScanObjectNN (centroid at the origin, max norm 1).
    """
    mesh = model_mesh(cfg, spec)
    rng = rng_for(cfg.seed, STAGE, f"{spec.model_id}:scan")
    eye = orbit_position(rng.uniform(0.0, 2 * np.pi), rng.uniform(*SCAN_ELEVATION), rng.uniform(*SCAN_DISTANCE))
    side = math.ceil(math.sqrt(SCAN_RAYS_PER_POINT * cfg.scan_points))
    for _ in range(4):  # thin objects fill little of the frame: cast more rays until there are enough hits
        points = visible_surface(mesh, framing_camera(eye, BOUND_RADIUS, side), rng)
        if len(points) >= 2 * cfg.scan_points:
            break
        side = math.ceil(side * 1.5)
    if len(points) == 0:
        raise RuntimeError(f"demo scan {spec.class_name}/{spec.model_id}: the sensor saw nothing")
    points = points + rng.normal(0.0, rng.uniform(*SCAN_NOISE), size=points.shape)
    points = resample_points(_occlude(points, rng), cfg.scan_points, rng)
    frame = trimesh.transformations.rotation_matrix(rng.uniform(0.0, 2 * np.pi), [0.0, 1.0, 0.0])
    points = trimesh.transformations.transform_points(points, frame)
    centroid = points.mean(axis=0)
    scale = 1.0 / np.linalg.norm(points - centroid, axis=1).max()
    normalise = trimesh.transformations.scale_matrix(scale) @ trimesh.transformations.translation_matrix(-centroid)
    frame = normalise @ frame
    moved = mesh.copy()
    moved.apply_transform(frame)
    return Scan(points=((points - centroid) * scale).astype(np.float32), mesh=moved)


def write_scan_h5(path: str | Path, points: np.ndarray, labels: np.ndarray) -> None:
    """A ScanObjectNN OBJ-ONLY h5 (data float32 (N, P, 3), label int64 (N,), mask int64 (N, P) all 1), atomically.

    No timestamps (h5py's track_times defaults to off; passed explicitly) and fixed layout, so the bytes repeat.
    """
    points = np.asarray(points, dtype=np.float32)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver="earliest", track_order=False) as h5:
            h5.create_dataset("data", data=points, track_times=False)
            h5.create_dataset("label", data=np.asarray(labels, dtype=np.int64), track_times=False)
            h5.create_dataset("mask", data=np.ones(points.shape[:2], dtype=np.int64), track_times=False)


def write_scans(
    train_path: str | Path,
    test_path: str | Path,
    cfg: DemoConfig,
    specs: list[ModelSpec],
    progress: Progress | None = None,
) -> dict[str, int]:
    """Scan every spec and write the training and test h5 files; returns the row count per split."""
    rows: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "test": []}
    for spec in specs:
        rows[spec.split].append((make_scan(cfg, spec).points, spec.label))
        if progress is not None:
            progress.step()
    for split, path in (("train", train_path), ("test", test_path)):
        points = np.stack([p for p, _ in rows[split]]) if rows[split] else np.zeros((0, cfg.scan_points, 3))
        write_scan_h5(path, points, np.array([label for _, label in rows[split]], dtype=np.int64))
    return {split: len(r) for split, r in rows.items()}


# ---------------------------------------------------------------------------------------------- everything


def generate_meshes(
    cfg: DemoConfig, specs: list[ModelSpec], progress: Progress | None = None
) -> Iterator[tuple[str, trimesh.Trimesh]]:
    for spec in specs:
        yield spec.model_id, model_mesh(cfg, spec)
        if progress is not None:
            progress.step()


def write_demo(
    cfg: DemoConfig,
    meshes_path: str | Path,
    scans_train_path: str | Path,
    scans_test_path: str | Path,
    images_path: str | Path,
    logger: logging.Logger | None = None,
) -> dict[str, int]:
    """Write the three demo archives; returns counts for the log."""
    logger = logger or logging.getLogger(f"pipeline3d.{STAGE}")
    specs = archive_models(cfg)
    scans = scan_models(cfg)
    n_dup = sum(s.duplicate_of is not None for s in specs)
    logger.info(
        "%d classes | %d archive models (%d near-duplicates) | %d scans | %d images",
        len(cfg.classes),
        len(specs),
        n_dup,
        len(scans),
        len(specs) * cfg.image_views,
    )
    meshes = dict(generate_meshes(cfg, specs, Progress(logger, len(specs), "meshes", every=100)))
    n_members = write_mesh_archive(meshes_path, specs, meshes)
    logger.info(
        "wrote %s (%d meshes, %d faces in total)", meshes_path, n_members, sum(len(m.faces) for m in meshes.values())
    )
    n_images = write_image_archive(images_path, cfg, specs, meshes, Progress(logger, len(specs), "rendered", every=100))
    logger.info("wrote %s (%d depth images)", images_path, n_images)
    split_counts = write_scans(
        scans_train_path, scans_test_path, cfg, scans, Progress(logger, len(scans), "scans", every=50)
    )
    logger.info(
        "wrote %s (%d scans) and %s (%d scans)",
        scans_train_path,
        split_counts["train"],
        scans_test_path,
        split_counts["test"],
    )
    if split_counts["test"] == 0:
        logger.warning("demo.scans_per_class is 1: the test scan file is empty")
    # The scans' integer labels index demo.classes; ship the names beside them (the ModelNet40-h5 convention
    # ingest reads), so the dataset config need not repeat the class list.
    names_path = Path(scans_train_path).parent / CLASS_NAMES_FILE
    write_text(names_path, "".join(f"{name}\n" for name in cfg.classes))
    logger.info("wrote %s", names_path)
    return {
        "meshes": n_members,
        "duplicates": n_dup,
        "images": n_images,
        "scans_train": split_counts["train"],
        "scans_test": split_counts["test"],
    }
