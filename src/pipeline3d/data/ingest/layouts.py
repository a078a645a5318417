"""Planning: which items a source's layout holds (meshes, images, h5 clouds), before any payload is read."""

from __future__ import annotations

import collections
import json
from pathlib import Path, PurePosixPath
from typing import Iterable

from ...io.archives import Member, RawSource
from ...io.h5clouds import CloudFile, class_names_near, find_h5_files, scanobjectnn_files, split_of
from ...io.images import IMAGE_SUFFIXES
from ...io.meshes import MESH_FORMATS, UNSUPPORTED_MESH_SUFFIXES
from ...io.rejects import ItemError, Reject
from .spec import JSON_MAX_BYTES, SHAPENET_SYNSETS, SPLIT_FOLDERS, IngestConfigError, IngestSpec, Planned, id_part


def ignorable_member(name: str) -> bool:
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
        layout = detect_mesh_layout(m.name for m in raw.members if not ignorable_member(m.name))
    planned, rejects = [], []
    for m in raw.members:
        suffix = m.suffix
        if ignorable_member(m.name) or (suffix not in MESH_FORMATS and suffix not in UNSUPPORTED_MESH_SUFFIXES):
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
            planned.append(
                Planned(
                    f"{spec.dataset}/{synset}/{model}",
                    SHAPENET_SYNSETS.get(synset, synset),
                    "",
                    m.source,
                    MESH_FORMATS[suffix],
                    member=m,
                )
            )
        elif layout == "modelnet":
            if len(parts) < 3 or parts[-2].lower() not in SPLIT_FOLDERS:
                rejects.append(Reject(m.source, "bad_layout", "not <class>/{train,test}/<name>"))
                continue
            cls = parts[-3]
            planned.append(
                Planned(
                    f"{spec.dataset}/{cls}/{stem}", cls, parts[-2].lower(), m.source, MESH_FORMATS[suffix], member=m
                )
            )
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
        if ignorable_member(m.name):
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
            rejects.extend(
                Reject(i.source, "missing_json", f"no {PurePosixPath(key).name}.json beside the image") for i in images
            )
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
            planned.append(
                Planned(
                    f"{spec.dataset}/{id_part(name)}/{stem}",
                    name,
                    split,
                    image.source,
                    IMAGE_SUFFIXES[image.suffix].lower(),
                    member=image,
                    label_value=value,
                    meta=obj,
                )
            )
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
        raise IngestConfigError(
            "source.path mixes layouts ("
            + ", ".join(f"{p}: {f}" for p, f in layouts.items())
            + "): give every path the same layout, or set source.format"
        )
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
            planned.append(
                Planned(
                    f"{spec.dataset}/{id_part(name)}/{stem}-{index:06d}",
                    name,
                    split,
                    source,
                    "h5",
                    label_value=value,
                    h5_path=path,
                    h5_index=index,
                    meta={"h5_index": index},
                    origin=origin,
                )
            )
    return planned, rejects, layout
