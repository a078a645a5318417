"""What ingest is asked to do (``IngestSpec``) and what it finds (``Planned`` items, ``IngestResult``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ...io.archives import Limits, Member, RawSource
from ...io.rejects import Reject

STAGE = "ingest"
KINDS = {
    "mesh": ("auto", "shapenet", "modelnet", "loose"),
    "pointcloud": ("auto", "scanobjectnn", "modelnet40_h5", "h5"),
    "image": ("auto", "image_tar"),
}
SPLIT_FOLDERS = ("train", "test")
JSON_MAX_BYTES = 1 << 20

# ShapeNetCore.v2's 55 synsets (WordNet offsets) -> short class names.
SHAPENET_SYNSETS: dict[str, str] = {
    "02691156": "airplane",
    "02747177": "trash_bin",
    "02773838": "bag",
    "02801938": "basket",
    "02808440": "bathtub",
    "02818832": "bed",
    "02828884": "bench",
    "02843684": "birdhouse",
    "02871439": "bookshelf",
    "02876657": "bottle",
    "02880940": "bowl",
    "02924116": "bus",
    "02933112": "cabinet",
    "02942699": "camera",
    "02946921": "can",
    "02954340": "cap",
    "02958343": "car",
    "02992529": "cellphone",
    "03001627": "chair",
    "03046257": "clock",
    "03085013": "keyboard",
    "03207941": "dishwasher",
    "03211117": "display",
    "03261776": "earphone",
    "03325088": "faucet",
    "03337140": "file_cabinet",
    "03467517": "guitar",
    "03513137": "helmet",
    "03593526": "jar",
    "03624134": "knife",
    "03636649": "lamp",
    "03642806": "laptop",
    "03691459": "loudspeaker",
    "03710193": "mailbox",
    "03759954": "microphone",
    "03761084": "microwave",
    "03790512": "motorbike",
    "03797390": "mug",
    "03928116": "piano",
    "03938244": "pillow",
    "03948459": "pistol",
    "03991062": "flowerpot",
    "04004475": "printer",
    "04074963": "remote",
    "04090263": "rifle",
    "04099429": "rocket",
    "04225987": "skateboard",
    "04256520": "sofa",
    "04330267": "stove",
    "04379243": "table",
    "04401088": "telephone",
    "04460130": "tower",
    "04468005": "train",
    "04530566": "watercraft",
    "04554684": "washer",
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
            raise IngestConfigError(
                f"source.format {fmt!r} does not fit kind {kind!r} (allowed: {', '.join(KINDS[kind])})"
            )
        ingest = params.get("ingest", {})
        names = source.get("class_names")
        return cls(
            dataset=dataset,
            kind=kind,
            format=fmt,
            path=source_paths(path),
            variant=source.get("variant", "obj_bg"),
            class_names=tuple(names) if names else None,
            max_items=source.get("max_items"),
            limits=Limits.from_config(ingest),
            max_faces=int(ingest.get("max_faces", 5_000_000)),
            workers=int(ingest.get("workers", 1)),
        )


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
