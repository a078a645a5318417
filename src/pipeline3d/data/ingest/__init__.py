"""Ingest one dataset: raw input -> manifest rows, rejects rows and the item store (``pipeline3d.io.itemstore``).

``source.path`` is one raw input or a list of them (real collections come split: ShapeNetCore.v2 is one zip per
synset, a data set may be a folder plus an archive of more items). Every path is scanned and planned on its own,
with one layout for all of them (``auto`` looks at the members of every path together); the planned items are
then pooled, so labels, duplicates and ``max_items`` are decided over the whole dataset. An id found in two
sources is never merged: the first copy is kept and the other is a ``duplicate_id`` reject naming both. A
refused archive rejects that source alone; a path that does not exist stops the ingest (a configuration error).
Point clouds: the h5 files of every path, in order.

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

Modules: ``spec`` (the request and the items), ``layouts`` (planning), ``choices`` (duplicates, labels,
subset), ``payloads`` (reading, parsing, storing), ``stage`` (the whole stage).
"""

from __future__ import annotations

from .choices import stratified_subset
from .layouts import detect_mesh_layout
from .spec import SHAPENET_SYNSETS, IngestConfigError, IngestResult, IngestSpec, Planned
from .stage import REJECTS_LOGGED_PER_REASON, ingest_dataset, log_rejects, plan_archives, run_ingest

__all__ = [
    "IngestConfigError",
    "IngestResult",
    "IngestSpec",
    "Planned",
    "REJECTS_LOGGED_PER_REASON",
    "SHAPENET_SYNSETS",
    "detect_mesh_layout",
    "ingest_dataset",
    "log_rejects",
    "plan_archives",
    "run_ingest",
    "stratified_subset",
]
