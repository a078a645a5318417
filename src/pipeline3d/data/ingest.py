"""Ingest one dataset: raw input -> manifest rows, rejects rows and the item store (``pipeline3d.io.itemstore``).

``source.path`` is one raw input or a list of them (real collections come split: ShapeNetCore.v2 is one zip per
synset, a data set may be a folder plus an archive of more items). Every path is scanned and planned on its own,
with one layout for all of them (``auto`` looks at the members of every path together); the planned items are
then pooled, so labels, duplicates and ``max_items`` are decided over the whole dataset. An id found in two
sources is never merged: the first copy is kept and the other is a ``duplicate_id`` reject naming both. A refused archive rejects that source alone; a path
that does not exist stops the ingest (a configuration error). Point clouds: the h5 files of every path, in order.

Layouts (``source.format``; ``auto`` guesses from the paths). Any leading folders are allowed (e.g. the one
top-level folder of an archive), because layouts are matched on the end of each member path:

- mesh ``shapenet``: ``<synset>/<model>/models/model_normalized.obj`` (v2; v1's ``<synset>/<model>/model.obj`` too
  when the format is given explicitly) -> id ``<dataset>/<synset>/<model>``, label_name from the ShapeNetCore
  synset table (an unknown or non-numeric folder is its own name), source_split ''.
- mesh ``modelnet``: ``<class>/{train,test}/<name>.<ext>`` -> ``<dataset>/<class>/<name>``, split from the folder.
- mesh ``loose``: ``<class>/<name>.<ext>`` -> ``<dataset>/<class>/<name>``, split ''.
  Mesh extensions: .off .obj (own parsers), .ply .stl (trimesh). Other 3D formats (.glb, .fbx, ...) are rejected
  (``unsupported_format``); every other file (textures, .mtl, .json, macOS ``._*`` / ``__MACOSX``) is ignored
  and counted in the log. A mesh file that does not fit the layout is rejected (``bad_layout``).
- pointcloud ``scanobjectnn``: the variant's two files (``pipeline3d.io.h5clouds.SCANOBJECTNN_VARIANTS``);
  ``modelnet40_h5`` / ``h5``: one h5 file or every h5 under a folder (modelnet40_h5 requires train/test in the
  file name). Id ``<dataset>/<label_name>/<h5stem>-<index:06d>``; label_name = ``source.class_names[label]``, else
  a ``shape_names.txt`` beside the files (ModelNet40-h5 ships one), else ``class_<label:03d>``.
- image ``image_tar``: ``<key>.png|jpg|jpeg`` + ``<key>.json`` (tar, zip or folder); label from the JSON ``label``
  (a name, or an int index into ``class_names``), split from ``split`` (train / test / '' / absent). Id
  ``<dataset>/<label_name>/<key>`` (key = file name without extension).

Labels: the source's integers when every item has one (h5, int JSON labels), otherwise the index of the
label_name in the sorted class names of all items the layout found (before parsing and before ``max_items``,
so a broken file or a smaller subset never shifts the labels). ``max_items`` keeps a class-stratified,
deterministic subset chosen by a stable hash of the shape id. Duplicate shape ids: the first in
(shape_id, source) order is kept, the others are rejected with ``duplicate_id``.

Manifest columns (contract): shape_id, dataset, kind, label (int64), label_name, source_split, source,
sha256 (of the raw file bytes; for h5 clouds of the float32 little-endian points), n_vertices, n_faces,
n_points (nullable Int64), meta (JSON: meshes ``{"cleanup": {...}}`` with the clean-up counts, clouds
``{"h5_index": i}``, images the item's JSON object), plus ``format`` (off/obj/ply/stl/h5/png/jpeg). Rows are
sorted by shape_id; item i of items.h5 is row i. Parquet key-value metadata: ``pipeline3d.class_names`` (JSON
list, label -> name), ``pipeline3d.dataset``, ``pipeline3d.kind``, ``pipeline3d.layout``.
Rejects columns: source, stage ("ingest"), reason (``pipeline3d.io.rejects.REASONS``), detail; sorted.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..io.archives import ArchiveRefused, Limits, Member, RawSource, open_raw
from ..io.h5clouds import (CloudFile, check_cloud, class_names_near, find_h5_files, scanobjectnn_files, split_of)
from ..io.images import IMAGE_SUFFIXES, inspect_image
from ..io.itemstore import ItemStore, ItemStoreWriter
from ..io.meshes import MESH_FORMATS, UNSUPPORTED_MESH_SUFFIXES, load_mesh
from ..io.rejects import REJECT_COLUMNS, ItemError, Reject
from ..log import Progress
from ..rng import stable_hash

STAGE = "ingest"
KINDS = {"mesh": ("auto", "shapenet", "modelnet", "loose"),
         "pointcloud": ("auto", "scanobjectnn", "modelnet40_h5", "h5"),
         "image": ("auto", "image_tar")}
SPLIT_FOLDERS = ("train", "test")
JSON_MAX_BYTES = 1 << 20

# ShapeNetCore.v2's 55 synsets (WordNet offsets) -> short class names.
SHAPENET_SYNSETS: dict[str, str] = {
    "02691156": "airplane", "02747177": "trash_bin", "02773838": "bag", "02801938": "basket",
    "02808440": "bathtub", "02818832": "bed", "02828884": "bench", "02843684": "birdhouse",
    "02871439": "bookshelf", "02876657": "bottle", "02880940": "bowl", "02924116": "bus",
    "02933112": "cabinet", "02942699": "camera", "02946921": "can", "02954340": "cap",
    "02958343": "car", "02992529": "cellphone", "03001627": "chair", "03046257": "clock",
    "03085013": "keyboard", "03207941": "dishwasher", "03211117": "display", "03261776": "earphone",
    "03325088": "faucet", "03337140": "file_cabinet", "03467517": "guitar", "03513137": "helmet",
    "03593526": "jar", "03624134": "knife", "03636649": "lamp", "03642806": "laptop",
    "03691459": "loudspeaker", "03710193": "mailbox", "03759954": "microphone", "03761084": "microwave",
    "03790512": "motorbike", "03797390": "mug", "03928116": "piano", "03938244": "pillow",
    "03948459": "pistol", "03991062": "flowerpot", "04004475": "printer", "04074963": "remote",
    "04090263": "rifle", "04099429": "rocket", "04225987": "skateboard", "04256520": "sofa",
    "04330267": "stove", "04379243": "table", "04401088": "telephone", "04460130": "tower",
    "04468005": "train", "04530566": "watercraft", "04554684": "washer",
}


class IngestConfigError(ValueError):
    """A problem with the stage parameters (not with the data)."""


@dataclass(frozen=True)
class IngestSpec:
    dataset: str
    kind: str
    format: str
    path: tuple[str, ...]  # one or more raw inputs (folders, archives, h5 files), all of the same kind and layout
    variant: str = "obj_bg"
    class_names: tuple[str, ...] | None = None
    max_items: int | None = None
    limits: Limits = Limits()
    max_faces: int = 5_000_000
    workers: int = 1

    @classmethod
    def from_params(cls, params: dict) -> "IngestSpec":
        try:
            dataset, source = params["dataset"], params["source"]
            kind, path = source["kind"], source["path"]
        except (KeyError, TypeError) as exc:
            raise IngestConfigError(f"params lack {exc} (need dataset and source.kind / source.path)") from None
        fmt = source.get("format", "auto")
        if kind not in KINDS:
            raise IngestConfigError(f"source.kind {kind!r} is not one of {', '.join(KINDS)}")
        if fmt not in KINDS[kind]:
            raise IngestConfigError(f"source.format {fmt!r} does not fit kind {kind!r} "
                                    f"(allowed: {', '.join(KINDS[kind])})")
        ingest = params.get("ingest", {})
        names = source.get("class_names")
        return cls(dataset=dataset, kind=kind, format=fmt, path=source_paths(path),
                   variant=source.get("variant", "obj_bg"),
                   class_names=tuple(names) if names else None, max_items=source.get("max_items"),
                   limits=Limits.from_config(ingest), max_faces=int(ingest.get("max_faces", 5_000_000)),
                   workers=int(ingest.get("workers", 1)))


def source_paths(path: Any) -> tuple[str, ...]:
    """``source.path`` (a path or a non-empty list of paths) as a tuple; the same path twice is a config error."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else path
    if not isinstance(paths, (list, tuple)) or not paths:
        raise IngestConfigError(f"source.path must be a path or a non-empty list of paths, got {path!r}")
    out, seen = [], {}
    for p in paths:
        if not isinstance(p, (str, os.PathLike)) or not str(p):
            raise IngestConfigError(f"source.path entries must be non-empty paths, got {p!r}")
        key = os.path.normpath(str(p))
        if key in seen:
            raise IngestConfigError(f"source.path lists the same input twice: {seen[key]!r} and {str(p)!r}")
        seen[key] = str(p)
        out.append(str(p))
    return tuple(out)


@dataclass
class Planned:
    """An item found in the source layout, before its payload is read."""

    shape_id: str
    label_name: str
    source_split: str
    source: str
    fmt: str
    member: Member | None = None
    label_value: int | None = None  # an integer label given by the source itself
    h5_path: str | None = None
    h5_index: int | None = None
    meta: dict = field(default_factory=dict)
    label: int = -1
    origin: str = ""  # the configured path (one entry of source.path) the item was found in
    # the scanned input to read the member from; stays in the main process (workers only get the bytes)
    raw: RawSource | None = field(default=None, repr=False, compare=False)


@dataclass
class IngestResult:
    rows: list[dict]
    rejects: list[Reject]
    class_names: list[str]
    layout: str
    counts: dict[str, int] = field(default_factory=dict)


def id_part(text: str) -> str:
    """A shape-id component: no '/', never empty."""
    return text.replace("/", "_") or "_"


# --------------------------------------------------------------------------------------------------------------
# planning: which items does the layout hold


def _ignorable(name: str) -> bool:
    parts = name.split("/")
    return "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] == ".DS_Store"


def detect_mesh_layout(names: Iterable[str]) -> str:
    """shapenet if any path ends in models/model_normalized.obj, modelnet if any mesh sits in a train/test
    folder, else loose."""
    modelnet = False
    for name in names:
        parts = name.split("/")
        if len(parts) >= 4 and parts[-2] == "models" and parts[-1] == "model_normalized.obj":
            return "shapenet"
        in_split_folder = len(parts) >= 3 and parts[-2].lower() in SPLIT_FOLDERS
        if in_split_folder and PurePosixPath(name).suffix.lower() in MESH_FORMATS:
            modelnet = True
    return "modelnet" if modelnet else "loose"


Plan = tuple[list[Planned], list[Reject], str]  # items, rejects, layout


def plan_meshes(raw: RawSource, spec: IngestSpec, ignored: collections.Counter, layout: str | None = None) -> Plan:
    """Plan one input; ``layout`` (when several inputs share one, detected over all of them) overrides the
    spec's format."""
    layout = layout or spec.format
    if layout == "auto":
        layout = detect_mesh_layout(m.name for m in raw.members if not _ignorable(m.name))
    planned, rejects = [], []
    for m in raw.members:
        suffix = m.suffix
        if _ignorable(m.name) or (suffix not in MESH_FORMATS and suffix not in UNSUPPORTED_MESH_SUFFIXES):
            ignored[suffix or "(no extension)"] += 1
            continue
        if suffix in UNSUPPORTED_MESH_SUFFIXES:
            rejects.append(Reject(m.source, "unsupported_format", f"{suffix} is not read (use OFF/OBJ/PLY/STL)"))
            continue
        parts = m.name.split("/")
        stem = PurePosixPath(parts[-1]).stem
        if layout == "shapenet":
            if len(parts) >= 4 and parts[-2] == "models" and parts[-1] == "model_normalized.obj":
                synset, model = parts[-4], parts[-3]
            elif spec.format == "shapenet" and len(parts) >= 3 and parts[-1] == "model.obj":
                synset, model = parts[-3], parts[-2]
            else:
                rejects.append(Reject(m.source, "bad_layout", "not <synset>/<model>/models/model_normalized.obj"))
                continue
            planned.append(Planned(f"{spec.dataset}/{synset}/{model}", SHAPENET_SYNSETS.get(synset, synset), "",
                                   m.source, MESH_FORMATS[suffix], member=m))
        elif layout == "modelnet":
            if len(parts) < 3 or parts[-2].lower() not in SPLIT_FOLDERS:
                rejects.append(Reject(m.source, "bad_layout", "not <class>/{train,test}/<name>"))
                continue
            cls = parts[-3]
            planned.append(Planned(f"{spec.dataset}/{cls}/{stem}", cls, parts[-2].lower(), m.source,
                                   MESH_FORMATS[suffix], member=m))
        else:
            if len(parts) < 2:
                rejects.append(Reject(m.source, "bad_layout", "not <class>/<name>: no class folder"))
                continue
            cls = parts[-2]
            planned.append(Planned(f"{spec.dataset}/{cls}/{stem}", cls, "", m.source, MESH_FORMATS[suffix], member=m))
    return planned, rejects, layout


def class_name_of(label: int, names: tuple[str, ...] | list[str] | None) -> str:
    if label < 0:
        raise ItemError("bad_label", f"negative label {label}")
    if names:
        if label >= len(names):
            raise ItemError("bad_label", f"label {label} but only {len(names)} class names")
        return names[label]
    return f"class_{label:03d}"


def parse_image_json(data: bytes, class_names) -> tuple[dict, str, int | None, str]:
    """(JSON object, label_name, integer label or None, source_split) of an image's JSON; raises bad_json."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ItemError("bad_json", f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ItemError("bad_json", f"JSON is a {type(obj).__name__}, expected an object")
    label = obj.get("label")
    if isinstance(label, str) and label.strip():
        name, value = label, None
    elif isinstance(label, int) and not isinstance(label, bool):
        try:
            name, value = class_name_of(label, class_names), label
        except ItemError as exc:
            raise ItemError("bad_json", exc.detail) from None
    else:
        raise ItemError("bad_json", f"no usable 'label' (got {label!r})")
    split = obj.get("split", "")
    split = "" if split is None else split
    if split not in ("train", "test", ""):
        raise ItemError("bad_json", f"'split' is {split!r}, expected 'train', 'test' or ''")
    return obj, name, value, split


def plan_images(raw: RawSource, spec: IngestSpec, ignored: collections.Counter) -> Plan:
    groups: dict[str, dict[str, list[Member]]] = collections.defaultdict(lambda: {"json": [], "image": []})
    for m in raw.members:
        suffix = m.suffix
        if _ignorable(m.name):
            ignored[suffix or "(no extension)"] += 1
        elif suffix == ".json":
            groups[m.name[: -len(suffix)]]["json"].append(m)
        elif suffix in IMAGE_SUFFIXES:
            groups[m.name[: -len(suffix)]]["image"].append(m)
        else:
            ignored[suffix or "(no extension)"] += 1
    planned, rejects = [], []
    for key in sorted(groups):
        jsons, images = groups[key]["json"], groups[key]["image"]
        if not images:
            rejects.extend(Reject(j.source, "missing_image", f"no {key}.png/.jpg beside the JSON") for j in jsons)
            continue
        if not jsons:
            rejects.extend(Reject(i.source, "missing_json", f"no {PurePosixPath(key).name}.json beside the image")
                           for i in images)
            continue
        meta_member = jsons[0]
        data = raw.prefetched.get(meta_member.index)
        try:
            if data is None:
                raise ItemError("bad_json", f"JSON of {meta_member.size} bytes, more than {JSON_MAX_BYTES}")
            obj, name, value, split = parse_image_json(data, spec.class_names)
        except ItemError as exc:
            rejects.extend(exc.reject(i.source) for i in images)
            continue
        stem = PurePosixPath(key).name
        for image in images:
            planned.append(Planned(f"{spec.dataset}/{id_part(name)}/{stem}", name, split, image.source,
                                   IMAGE_SUFFIXES[image.suffix].lower(), member=image, label_value=value, meta=obj))
    return planned, rejects, "image_tar"


def cloud_layout(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    p = Path(path)
    if p.is_dir() and any((p / folder).is_dir() for folder in ("main_split", "main_split_nobg")):
        return "scanobjectnn"
    return "h5"


def cloud_files(path: str, layout: str, variant: str) -> list[str]:
    """The h5 files of one configured path."""
    if layout == "scanobjectnn":
        try:
            files = scanobjectnn_files(path, variant)
        except ValueError as exc:
            raise IngestConfigError(str(exc)) from None
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"ScanObjectNN variant {variant!r}: missing {', '.join(missing)}")
        return files
    return find_h5_files(path)


def plan_clouds(spec: IngestSpec) -> Plan:
    layouts = {path: cloud_layout(path, spec.format) for path in spec.path}
    layout = layouts[spec.path[0]]
    if len(set(layouts.values())) > 1:
        raise IngestConfigError("source.path mixes layouts (" + ", ".join(f"{p}: {f}" for p, f in layouts.items())
                                + "): give every path the same layout, or set source.format")
    files = [(path, f) for path in spec.path for f in cloud_files(path, layout, spec.variant)]
    names = list(spec.class_names) if spec.class_names else class_names_near([f for _, f in files])
    planned, rejects = [], []
    for origin, path in files:
        split = split_of(path)
        if layout == "modelnet40_h5" and not split:
            rejects.append(Reject(path, "bad_layout", "ModelNet40-h5 file names must contain 'train' or 'test'"))
            continue
        try:
            with CloudFile(path) as cf:
                labels = cf.labels
        except ItemError as exc:
            rejects.append(exc.reject(path))
            continue
        stem = Path(path).stem
        for index, value in enumerate(labels.tolist()):
            source = f"{path}::{index}"
            try:
                name = class_name_of(value, names)
            except ItemError as exc:
                rejects.append(exc.reject(source))
                continue
            planned.append(Planned(f"{spec.dataset}/{id_part(name)}/{stem}-{index:06d}", name, split, source, "h5",
                                   label_value=value, h5_path=path, h5_index=index, meta={"h5_index": index},
                                   origin=origin))
    return planned, rejects, layout


# --------------------------------------------------------------------------------------------------------------
# ids, labels, subsets


def drop_duplicates(planned: list[Planned]) -> tuple[list[Planned], list[Reject]]:
    """Sorted by shape id; for a repeated id the first in (shape_id, source, member) order is kept (so which one
    wins never depends on the order of the configured paths). An id found in two configured paths is reported
    with both paths: the sources overlap, which is a data problem worth seeing, not something to merge."""
    def order(p: Planned):
        return p.shape_id, p.source, p.member.index if p.member else (p.h5_index or 0)

    kept, rejects = [], []
    for p in sorted(planned, key=order):
        if kept and kept[-1].shape_id == p.shape_id:
            first = kept[-1]
            if first.origin != p.origin:
                detail = (f"shape id {p.shape_id} is in two sources, {first.origin} and {p.origin}; "
                          f"kept {first.source}")
            else:
                detail = f"shape id {p.shape_id} already used by {first.source}"
            rejects.append(Reject(p.source, "duplicate_id", detail))
        else:
            kept.append(p)
    return kept, rejects


def assign_labels(planned: list[Planned], class_names: tuple[str, ...] | None) -> list[str]:
    """Set ``label`` on every item; return the class names (label i -> name i)."""
    if planned and all(p.label_value is not None for p in planned):
        by_value = {p.label_value: p.label_name for p in planned}
        known = list(class_names or [])
        top = max(max(by_value) + 1, len(known))
        for p in planned:
            p.label = int(p.label_value)
        return [by_value.get(i, known[i] if i < len(known) else f"class_{i:03d}") for i in range(top)]
    names = sorted({p.label_name for p in planned})
    index = {n: i for i, n in enumerate(names)}
    for p in planned:
        p.label = index[p.label_name]
    return names


def stratified_subset(planned: list[Planned], max_items: int | None) -> list[Planned]:
    """At most ``max_items`` items, spread over the classes in proportion to their sizes (every class gets one
    before any gets two); inside a class the order is a stable hash of the shape id, so the subset does not
    depend on list order and grows monotonically with ``max_items``. Returned sorted by shape id."""
    if max_items is None or len(planned) <= max_items:
        return planned
    by_class: dict[str, list[Planned]] = collections.defaultdict(list)
    for p in planned:
        by_class[p.label_name].append(p)
    ranked = []
    for name, items in by_class.items():
        items.sort(key=lambda p: (stable_hash(p.shape_id), p.shape_id))
        ranked += [(Fraction(r, len(items)), name, r, p) for r, p in enumerate(items)]
    ranked.sort(key=lambda t: t[:3])
    chosen = [t[3] for t in ranked[:max_items]]
    return sorted(chosen, key=lambda p: p.shape_id)


# --------------------------------------------------------------------------------------------------------------
# parsing (in worker processes when workers > 1)


def parse_payload(kind: str, fmt: str, data: bytes, max_faces: int) -> tuple:
    """Worker entry point: ("ok", result) or ("reject", reason, detail); never raises for bad data."""
    try:
        if kind == "mesh":
            return ("ok", load_mesh(data, fmt, max_faces))
        info = inspect_image(data)
        return ("ok", (info, hashlib.sha256(data).hexdigest()))
    except ItemError as exc:
        return ("reject", exc.reason, exc.detail)
    except MemoryError:
        return ("reject", "too_large", "out of memory while parsing")
    except Exception as exc:  # a malformed file must cost one reject row, never the whole ingest
        return ("reject", "parse_error", f"unexpected {type(exc).__name__}: {exc}")


class OrderedPool:
    """Map a function over jobs in worker processes (or inline for one worker), yielding results in job order.

    At most ``window`` jobs are in flight, so memory stays bounded however many items there are.
    """

    def __init__(self, workers: int, window: int | None = None):
        self.workers = max(1, int(workers))
        self.window = window or 4 * self.workers
        self._ex: ProcessPoolExecutor | None = None

    def __enter__(self) -> "OrderedPool":
        if self.workers > 1:
            import pandas  # noqa: F401  (the parsers' fast path; imported once here, before the workers fork)

            # fork is cheap and safe here (no threads yet, the item store is opened afterwards); spawn elsewhere
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self._ex = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method))
            # start every worker now, before any output file is open: a worker forked later would inherit the
            # item store's file descriptor and its HDF5 lock, and the spool could not be reopened for reading
            self._ex.submit(os.getpid).result()
        return self

    def __exit__(self, *exc) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable, jobs: Iterable[tuple[Any, tuple]]) -> Iterator[tuple[Any, Any]]:
        if self._ex is None:
            for ctx, args in jobs:
                yield ctx, fn(*args)
            return
        pending: collections.deque = collections.deque()
        for ctx, args in jobs:
            pending.append((ctx, self._ex.submit(fn, *args)))
            if len(pending) >= self.window:
                ctx0, fut = pending.popleft()
                yield ctx0, fut.result()
        while pending:
            ctx0, fut = pending.popleft()
            yield ctx0, fut.result()


class ItemSink:
    """Writes accepted items to the item store in shape-id order.

    Items that arrive in order (directories, zips, h5) go straight into the store; a streamed tar delivers them
    in archive order, so they go to a spool file beside the output first and are copied over in order.
    """

    def __init__(self, path: str | os.PathLike, dataset: str, kind: str, in_order: bool):
        self.path, self.dataset, self.kind, self.in_order = Path(path), dataset, kind, in_order
        self.spool = self.path.with_name(f".{self.path.name}.spool.h5")
        self.ids: list[str] = []

    def __enter__(self) -> "ItemSink":
        self._writer = ItemStoreWriter(self.path if self.in_order else self.spool, self.dataset, self.kind)
        self._writer.__enter__()
        return self

    def add(self, shape_id: str, **arrays: np.ndarray) -> None:
        if self.in_order and self.ids and shape_id <= self.ids[-1]:
            raise RuntimeError(f"item store written out of order: {shape_id} after {self.ids[-1]}")
        self._writer.add(shape_id, **arrays)
        self.ids.append(shape_id)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._writer.__exit__(exc_type, exc, tb)
            if exc_type is None and not self.in_order:
                with ItemStore(self.spool) as spool, ItemStoreWriter(self.path, self.dataset, self.kind) as out:
                    for shape_id in sorted(self.ids):
                        row = spool.row_of(shape_id)
                        if self.kind == "mesh":
                            v, f = spool.mesh(row)
                            out.add(shape_id, vertices=v, faces=f)
                        else:
                            out.add(shape_id, image_bytes=np.frombuffer(spool.image_bytes(row), dtype=np.uint8))
        finally:
            self.spool.unlink(missing_ok=True)


def _row(p: Planned, spec: IngestSpec, sha256: str, fmt: str, meta: dict, n_vertices=None, n_faces=None,
         n_points=None) -> dict:
    return {"shape_id": p.shape_id, "dataset": spec.dataset, "kind": spec.kind, "label": p.label,
            "label_name": p.label_name, "source_split": p.source_split, "source": p.source, "sha256": sha256,
            "n_vertices": n_vertices, "n_faces": n_faces, "n_points": n_points,
            "meta": json.dumps(meta, sort_keys=True, separators=(",", ":")), "format": fmt}


def read_planned(planned: list[Planned]) -> Iterator[tuple[Planned, bytes | Reject]]:
    """``(item, raw bytes or Reject)`` for every planned item, each read from the input it was planned from.

    If every input reads in any order (folders, zips) the items come in the given (shape-id) order, so the item
    store is written directly; otherwise input by input, each in its own order (a tar streams in archive order).
    """
    inputs = list({id(p.raw): p.raw for p in planned}.values())  # in order of first use, deterministic
    if all(raw.random_access for raw in inputs):
        for p in planned:
            for _, data in p.raw.read_all([p.member]):
                yield p, data
        return
    for raw in inputs:
        mine = {p.member.index: p for p in planned if p.raw is raw}  # member indices are unique within one input
        for member, data in raw.read_all([p.member for p in mine.values()]):
            yield mine[member.index], data


def ingest_members(planned: list[Planned], spec: IngestSpec, items_path, logger: logging.Logger,
                   counts: collections.Counter) -> tuple[list[dict], list[Reject]]:
    """Read, parse and store mesh / image items of archives or directories (``Planned.raw``)."""
    rows, rejects = [], []
    progress = Progress(logger, len(planned), "ingest: items parsed", every=1000, seconds=30)
    in_order = all(p.raw.random_access for p in planned)

    def jobs():
        for p, data in read_planned(planned):
            if isinstance(data, Reject):
                rejects.append(data)
                progress.step()
                continue
            yield (p, data), (spec.kind, p.fmt, data, spec.max_faces)

    with OrderedPool(spec.workers) as pool, ItemSink(items_path, spec.dataset, spec.kind, in_order) as sink:
        for (p, data), result in pool.map(parse_payload, jobs()):
            progress.step()
            if result[0] == "reject":
                rejects.append(Reject(p.source, result[1], result[2]))
                continue
            if spec.kind == "mesh":
                mesh = result[1]
                sink.add(p.shape_id, vertices=mesh.vertices, faces=mesh.faces)
                rows.append(_row(p, spec, mesh.sha256, p.fmt, {"cleanup": mesh.cleanup},
                                 n_vertices=len(mesh.vertices), n_faces=len(mesh.faces)))
                for key in ("degenerate_faces", "duplicate_faces", "unreferenced_vertices"):
                    counts[key] += mesh.cleanup[key]
                if any(mesh.cleanup[k] for k in ("degenerate_faces", "duplicate_faces", "unreferenced_vertices")):
                    counts["meshes_cleaned"] += 1
                    logger.debug("%s: clean-up %s", p.source, mesh.cleanup)
            else:
                info, sha = result[1]
                sink.add(p.shape_id, image_bytes=np.frombuffer(data, dtype=np.uint8))
                rows.append(_row(p, spec, sha, info.format.lower(), p.meta))
    return rows, rejects


def ingest_clouds(planned: list[Planned], spec: IngestSpec, items_path,
                  logger: logging.Logger) -> tuple[list[dict], list[Reject]]:
    rows, rejects = [], []
    files: dict[str, CloudFile] = {}
    progress = Progress(logger, len(planned), "ingest: clouds read", every=5000, seconds=30)
    try:
        with ItemStoreWriter(items_path, spec.dataset, "pointcloud") as store:
            for p in planned:
                progress.step()
                try:
                    cf = files.get(p.h5_path) or files.setdefault(p.h5_path, CloudFile(p.h5_path))
                    points = cf.points(p.h5_index)
                    check_cloud(points)
                except ItemError as exc:
                    rejects.append(exc.reject(p.source))
                    continue
                except OSError as exc:  # a corrupt chunk inside an otherwise readable file
                    rejects.append(Reject(p.source, "read_error", str(exc)))
                    continue
                sha = hashlib.sha256(points.astype("<f4", copy=False).tobytes()).hexdigest()
                store.add(p.shape_id, points=points)
                rows.append(_row(p, spec, sha, "h5", p.meta, n_points=len(points)))
    finally:
        for cf in files.values():
            cf.close()
    return rows, rejects


# --------------------------------------------------------------------------------------------------------------
# the whole stage


def plan_archives(spec: IngestSpec, ignored: collections.Counter, logger: logging.Logger) -> Plan:
    """Scan every configured path (folder or archive) and plan its mesh / image items.

    A refused archive costs one rejects row and the other paths go on; layout ``refused`` means none was left.
    """
    prefetch = (lambda name: name.lower().endswith(".json")) if spec.kind == "image" else None
    raws, rejects = [], []
    for path in spec.path:
        try:
            raws.append(open_raw(path, spec.limits, prefetch=prefetch, prefetch_max_bytes=JSON_MAX_BYTES))
        except ArchiveRefused as exc:
            logger.error("%s refused as a whole: %s: %s", path, exc.reason, exc.detail)
            rejects.append(Reject(path, exc.reason, exc.detail))
    if not raws:
        return [], rejects, "refused"
    if spec.kind == "mesh":
        layout = spec.format
        if layout == "auto":  # one layout for the whole dataset, whichever path holds the telling files
            layout = detect_mesh_layout(m.name for raw in raws for m in raw.members if not _ignorable(m.name))
    planned = []
    for raw in raws:
        if spec.kind == "mesh":
            items, refused, layout = plan_meshes(raw, spec, ignored, layout)
        else:
            items, refused, layout = plan_images(raw, spec, ignored)
        for p in items:
            p.raw, p.origin = raw, raw.label
        if len(raws) > 1:
            logger.info("%s: %d items found, %d refused while scanning", raw.label, len(items),
                        len(raw.rejects) + len(refused))
        planned += items
        rejects += raw.rejects + refused
    return planned, rejects, layout


def ingest_dataset(spec: IngestSpec, items_path: str | os.PathLike,
                   logger: logging.Logger | None = None) -> IngestResult:
    """Ingest ``spec``'s sources; writes the item store and returns manifest rows and rejects (not yet written)."""
    logger = logger or logging.getLogger(f"pipeline3d.{STAGE}")
    counts: collections.Counter = collections.Counter()
    ignored: collections.Counter = collections.Counter()
    if spec.kind == "pointcloud":
        planned, rejects, layout = plan_clouds(spec)
    else:
        planned, rejects, layout = plan_archives(spec, ignored, logger)
    if layout == "refused":
        with ItemStoreWriter(items_path, spec.dataset, spec.kind):
            pass
        return IngestResult([], sorted(rejects), [], "refused", dict(counts))

    logger.info("layout %s: %d items found, %d refused while scanning", layout, len(planned), len(rejects))
    if not planned:
        logger.warning("no items found in %s for kind %s / format %s: check the path and the layout",
                       ", ".join(spec.path), spec.kind, spec.format)
    if ignored:
        logger.info("ignored %d files that are not items: %s", sum(ignored.values()),
                    ", ".join(f"{k} {v}" for k, v in sorted(ignored.items())))
    planned, dupes = drop_duplicates(planned)
    rejects += dupes
    class_names = assign_labels(planned, spec.class_names)
    chosen = stratified_subset(planned, spec.max_items)
    if len(chosen) < len(planned):
        logger.info("max_items=%d: keeping %d of %d items (class-stratified)", spec.max_items, len(chosen),
                    len(planned))
    counts["found"], counts["selected"] = len(planned), len(chosen)

    if spec.kind == "pointcloud":
        rows, more = ingest_clouds(chosen, spec, items_path, logger)
    else:
        rows, more = ingest_members(chosen, spec, items_path, logger, counts)
    rejects += more
    rows.sort(key=lambda r: r["shape_id"])
    counts["accepted"], counts["rejected"] = len(rows), len(rejects)
    by_reason = collections.Counter(r.reason for r in rejects)
    logger.info("accepted %d items, rejected %d%s", len(rows), len(rejects),
                f" ({', '.join(f'{k} {v}' for k, v in sorted(by_reason.items()))})" if by_reason else "")
    if spec.kind == "mesh":
        logger.info("clean-up: %d meshes changed; dropped %d degenerate faces, %d duplicate faces, "
                    "%d unreferenced vertices", counts["meshes_cleaned"], counts["degenerate_faces"],
                    counts["duplicate_faces"], counts["unreferenced_vertices"])
    log_rejects(sorted(rejects), logger)
    return IngestResult(rows, sorted(rejects), class_names, layout, dict(counts))


REJECTS_LOGGED_PER_REASON = 20


def log_rejects(rejects: list[Reject], logger: logging.Logger, per_reason: int = REJECTS_LOGGED_PER_REASON) -> None:
    """A WARNING line for the first ``per_reason`` rejects of each reason and one summary line for the rest: a
    hostile archive of 200k bad members must not write a 40 MB log (rejects.parquet has every one)."""
    shown: collections.Counter = collections.Counter()
    for r in rejects:
        shown[r.reason] += 1
        if shown[r.reason] <= per_reason:
            logger.warning("rejected %s: %s: %s", r.source, r.reason, r.detail)
    for reason, n in sorted(shown.items()):
        if n > per_reason:
            logger.warning("... and %d more %s rejects (every reject is in rejects.parquet)", n - per_reason, reason)


MANIFEST_DTYPES = {"shape_id": "str", "dataset": "str", "kind": "str", "label": "int64", "label_name": "str",
                   "source_split": "str", "source": "str", "sha256": "str", "n_vertices": "Int64",
                   "n_faces": "Int64", "n_points": "Int64", "meta": "str", "format": "str"}


def manifest_frame(rows: list[dict]):
    import pandas as pd

    cols = {c: [r[c] for r in rows] for c in MANIFEST_DTYPES}
    return pd.DataFrame({c: pd.array(v, dtype=MANIFEST_DTYPES[c]) for c, v in cols.items()})


def rejects_frame(rejects: list[Reject]):
    import pandas as pd

    rows = sorted(rejects)
    data = {"source": [r.source for r in rows], "stage": [STAGE] * len(rows), "reason": [r.reason for r in rows],
            "detail": [r.detail for r in rows]}
    return pd.DataFrame({c: pd.array(data[c], dtype="str") for c in REJECT_COLUMNS})


def run_ingest(params: dict, manifest_path, rejects_path, items_path,
               logger: logging.Logger | None = None) -> IngestResult:
    """The stage: ingest, then write items.h5, manifest.parquet and rejects.parquet (each atomically)."""
    from ..io.atomic import write_parquet

    spec = IngestSpec.from_params(params)
    result = ingest_dataset(spec, items_path, logger)
    metadata = {"pipeline3d.class_names": json.dumps(result.class_names), "pipeline3d.dataset": spec.dataset,
                "pipeline3d.kind": spec.kind, "pipeline3d.layout": result.layout}
    write_parquet(manifest_path, manifest_frame(result.rows), metadata=metadata)
    write_parquet(rejects_path, rejects_frame(result.rejects))
    return result
