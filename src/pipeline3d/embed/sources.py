"""What the embedding stages embed: ingested images, depth views rendered from the ray cache, captions and prompts.

Every source lists its rows in sorted id order, so the embeddings files never depend on manifest row order, shard
count or shard assignment.

* images: one row per ingested image item (id = shape id), bytes from the item store;
* depth views: ``views`` evenly spaced camera views of every cached shape (id = ``<shape id>#view<v>``), rendered
  from the cached ray answers by the same function the fingerprints use (``data.fingerprints.depth_images``);
* texts: an image item's caption (manifest meta ``caption``; id = the item id), else class prompts (one per template
  and class; id = ``class:<label name>#t<i>``).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data.cache_lookup import locate_rows
from ..data.fingerprints import RAY_ARRAYS, depth_images
from ..io.itemstore import ItemStore
from ..io.shards import ShardReader
from ..io.tables import read_parquet
from ..log import Progress
from .text import prompt_texts

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("shape_id", "kind", "label", "label_name")
# Which ShardReader primitive may see the ray answers of each item kind (a point-cloud cache has no mesh arrays).
RAY_PRIMITIVE = {"mesh": "mesh", "pointcloud": "pc"}


def read_manifest(path: str | Path) -> pd.DataFrame:
    """The ingest manifest, checked for the columns the embedding stages use, indexed by shape id."""
    path = Path(path)
    try:
        table = read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the manifest: {exc}") from exc
    missing = sorted(set(MANIFEST_COLUMNS) - set(table.columns))
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {missing}")
    table = table.assign(shape_id=table["shape_id"].astype(str))
    if table["shape_id"].duplicated().any():
        raise ValueError(f"{path}: the manifest lists some shape ids more than once")
    return table.set_index("shape_id", drop=False)


def item_meta(value: Any, where: str) -> dict[str, Any]:
    """A manifest ``meta`` cell (JSON text; empty or null = no metadata) as a dict."""
    if value is None or (not isinstance(value, str) and pd.isna(value)) or value == "":
        return {}
    try:
        meta = json.loads(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: meta is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: meta is {type(meta).__name__}, expected a JSON object")
    return meta


# ------------------------------------------------------------------------------------------------------ images


@dataclass
class ImageRows:
    ids: list[str]
    images: list[Any]  # encoded bytes (items) or uint8 arrays (depth views)
    columns: dict[str, list[Any]] = field(default_factory=dict)


def image_items(manifest_path: str | Path, items_path: str | Path) -> ImageRows:
    """Every image item of an ingested image dataset, in shape-id order, with its label."""
    manifest = read_manifest(manifest_path)
    kinds = sorted(set(manifest["kind"].astype(str)) - {"image"})
    if kinds:
        raise ValueError(f"{manifest_path}: items of kind {kinds}; only image datasets have images to embed")
    ids = sorted(manifest.index)
    with ItemStore(items_path) as store:
        stored = set(store.shape_ids)
        absent = [sid for sid in ids if sid not in stored]
        if absent:
            raise ValueError(
                f"{items_path}: {len(absent)} manifest items are not in the item store "
                f"(first: {absent[:3]}); it was written from another manifest"
            )
        images = [store.image_bytes(store.row_of(sid)) for sid in ids]
    rows = manifest.loc[ids]
    return ImageRows(
        ids,
        images,
        {"label": rows["label"].astype(int).tolist(), "label_name": rows["label_name"].astype(str).tolist()},
    )


def view_indices(n_views: int, views: int) -> list[int]:
    """``views`` evenly spaced camera indices out of the cache's ``n_views`` (0 always included)."""
    if not 1 <= views <= n_views:
        raise ValueError(f"embed.image.views = {views} but the cache has {n_views} views per shape")
    return [(v * n_views) // views for v in range(views)]


def depth_view_items(
    manifest_path: str | Path, index_path: str | Path, shard_paths: Sequence[str | Path], views: int
) -> tuple[ImageRows, list[int]]:
    """uint8 depth images of ``views`` evenly spaced views of every cached shape; returns (rows, view indices).

    Rows are ordered by shape id, then view. Columns: shape_id, view (the cache's camera index), label.
    """
    manifest = read_manifest(manifest_path)
    where = locate_rows(index_path, shard_paths)
    ids = sorted(where)
    unknown = [sid for sid in ids if sid not in manifest.index]
    if unknown:
        raise ValueError(
            f"{index_path}: {len(unknown)} cached shapes are not in {manifest_path} (first: "
            f"{unknown[:3]}); the cache was built from another manifest"
        )
    by_shard: dict[Path, list[tuple[int, str]]] = defaultdict(list)
    for sid in ids:
        path, row = where[sid]
        by_shard[path].append((row, sid))
    rendered: dict[str, np.ndarray] = {}
    chosen: list[int] | None = None
    progress = Progress(log, len(ids), "rendered depth views", every=2000)
    for path in sorted(by_shard):
        kind = _shard_kind(path)
        with ShardReader(path, RAY_PRIMITIVE[kind]) as reader:
            prof = reader.profile
            picked = view_indices(int(prof["n_views"]), views)
            if chosen is not None and picked != chosen:
                raise ValueError(f"{path}: its cache profile has {prof['n_views']} views, unlike the other shards")
            chosen = picked
            t_key, hit_key = RAY_ARRAYS[kind]
            for row, sid in sorted(by_shard[path]):
                arrays = reader.read(row, (t_key, hit_key))
                images = depth_images(
                    arrays[t_key],
                    arrays[hit_key],
                    views=int(prof["n_views"]),
                    rays_per_view=int(prof["rays_per_view"]),
                    camera_radius=float(prof["camera_radius"]),
                )
                rendered[sid] = images[picked]
                progress.step()
    out = ImageRows([], [], {"shape_id": [], "view": [], "label": []})
    for sid in ids:
        for v, image in zip(chosen or [], rendered[sid]):
            out.ids.append(f"{sid}#view{v}")
            out.images.append(image)
            out.columns["shape_id"].append(sid)
            out.columns["view"].append(int(v))
            out.columns["label"].append(int(manifest.at[sid, "label"]))
    return out, list(chosen or [])


def _shard_kind(path: Path) -> str:
    import h5py

    with h5py.File(path, "r") as h5:
        kind = h5.attrs.get("kind")
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind not in RAY_ARRAYS:
        raise ValueError(f"{path}: cache shard of kind {kind!r} has no ray answers to render depth views from")
    return kind


# -------------------------------------------------------------------------------------------------------- texts


@dataclass
class TextRows:
    ids: list[str]
    texts: list[str]
    columns: dict[str, list[Any]]


def text_items(manifest_path: str | Path, templates: Sequence[str]) -> TextRows:
    """Captions of image items (meta ``caption``) and class prompts for every class some item has no caption for.

    Columns: text, kind (caption | prompt), shape_id (captions: the meta ``shape`` the image shows, else the item
    id; prompts: null), label, label_name, template (prompts only).
    """
    manifest = read_manifest(manifest_path)
    rows: list[tuple[str, str, str, str | None, int, str, str | None]] = []
    uncaptioned: dict[str, int] = {}
    for sid in sorted(manifest.index):
        item = manifest.loc[sid]
        label, name = int(item["label"]), str(item["label_name"])
        meta = item_meta(item["meta"], f"{manifest_path} item {sid}") if "meta" in manifest.columns else {}
        caption = meta.get("caption") if str(item["kind"]) == "image" else None
        if isinstance(caption, str) and caption.strip():
            shape = meta.get("shape")
            rows.append((sid, caption, "caption", str(shape) if shape not in (None, "") else sid, label, name, None))
        else:
            uncaptioned.setdefault(name, label)
    for name in sorted(uncaptioned):
        for i, (template, prompt) in enumerate(zip(templates, prompt_texts(name, templates))):
            rows.append((f"class:{name}#t{i}", prompt, "prompt", None, uncaptioned[name], name, template))
    n_captions = sum(r[2] == "caption" for r in rows)
    log.info(
        "%d captions, %d class prompts (%d classes x %d templates)",
        n_captions,
        len(rows) - n_captions,
        len(uncaptioned),
        len(templates),
    )
    names = ("text", "kind", "shape_id", "label", "label_name", "template")
    return TextRows(
        [r[0] for r in rows], [r[1] for r in rows], {name: [r[k + 1] for r in rows] for k, name in enumerate(names)}
    )
