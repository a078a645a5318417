"""The fingerprint_dataset stage: hash every item, find near-duplicate groups, write the two tables.

Items are processed in sorted shape-id order, so outputs do not depend on manifest row order, shard count or
shard assignment.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cache_lookup import locate_rows
from ..data.fingerprints import (
    GEOMETRY_BITS,
    GEOMETRY_GRID,
    GEOMETRY_SIGMA,
    RAY_ARRAYS,
    SYM_BITS,
    bits_to_hex,
    geometry_hashes,
    image_hash_bits,
    pack_codes,
    soft_occupancy,
    symmetry_inverses,
    view_hash_bits,
)
from ..data.near_duplicates import (
    DuplicateRule,
    GeometryCodes,
    duplicates_table,
    find_near_duplicates,
    link_same_source,
)
from ..io.atomic import write_parquet
from ..io.itemstore import ItemStore
from ..io.shards import ShardReader
from ..io.tables import read_parquet
from ..log import Progress

log = logging.getLogger(__name__)

GEOMETRY_BATCH = 256


@dataclass
class Hashes:
    ids: list[str]  # sorted
    view_bits: np.ndarray  # (N, views, bits) bool
    geometry: GeometryCodes | None  # packed
    geometry_hex: list[str] | None
    geometry_sym_hex: list[str] | None


def manifest_ids(manifest_path: str | Path, kind: str) -> list[str]:
    manifest_path = Path(manifest_path)
    try:
        manifest = read_parquet(manifest_path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{manifest_path}: cannot read the manifest: {exc}") from exc
    missing = {"shape_id", "kind"} - set(manifest.columns)
    if missing:
        raise ValueError(f"{manifest_path}: manifest lacks columns {sorted(missing)}")
    kinds = set(manifest["kind"].astype(str))
    if kinds - {kind}:
        raise ValueError(f"{manifest_path}: items of kind {sorted(kinds - {kind})}, the dataset config says {kind!r}")
    return manifest["shape_id"].astype(str).tolist()


def image_source_keys(manifest_path: str | Path, ids: list[str]) -> list[str | None]:
    """The object each image shows (metadata ``shape``), so views of one object share a group."""
    table = read_parquet(manifest_path)
    if "meta" not in table.columns:
        return [None] * len(ids)
    manifest = table.set_index("shape_id")["meta"]
    keys = []
    for sid in ids:
        try:
            meta = json.loads(manifest.get(sid) or "{}")
        except (TypeError, ValueError):
            meta = {}
        shape = meta.get("shape") if isinstance(meta, dict) else None
        keys.append(str(shape) if shape not in (None, "") else None)
    return keys


def _select(ids_available: list[str], manifest: list[str], where: str, manifest_path) -> list[str]:
    have, want = set(ids_available), set(manifest)
    extra = sorted(have - want)
    if extra:
        raise ValueError(
            f"{where} holds {len(extra)} items that are not in {manifest_path} (first: {extra[:3]}); "
            "it was built from another manifest"
        )
    lost = sorted(want - have)
    if lost:
        log.warning(
            "%d manifest items are not in %s (rejected there) and get no fingerprint; first: %s",
            len(lost),
            where,
            lost[:5],
        )
    return sorted(have)


def hash_cached_shapes(ids: list[str], where: dict[str, tuple[Path, int]], kind: str, fp: dict) -> Hashes:
    """View hashes from the ray cache and geometry signatures from the UDF grid of each shape."""
    views, hash_size = int(fp["views"]), int(fp["hash_size"])
    t_key, hit_key = RAY_ARRAYS[kind]
    pos = {sid: i for i, sid in enumerate(ids)}
    n = len(ids)
    view_bits = np.zeros((n, views, hash_size * hash_size), dtype=bool)
    words = -(-GEOMETRY_BITS // 64)
    plain, sym = np.zeros((n, words), np.uint64), np.zeros((n, -(-SYM_BITS // 64)), np.uint64)
    variants = np.zeros((n, 48, words), np.uint64)
    plain_hex, sym_hex = [""] * n, [""] * n

    def flush(batch_pos: list[int], fields: list[np.ndarray]) -> None:
        g = geometry_hashes(np.stack(fields))
        idx = np.asarray(batch_pos)
        plain[idx], sym[idx] = pack_codes(g.plain), pack_codes(g.sym)
        variants[idx] = pack_codes(g.variants.reshape(-1, GEOMETRY_BITS)).reshape(len(idx), 48, words)
        for k, i in enumerate(batch_pos):
            plain_hex[i], sym_hex[i] = bits_to_hex(g.plain[k]), bits_to_hex(g.sym[k])

    by_shard: dict[Path, list[tuple[int, str]]] = defaultdict(list)
    for sid in ids:
        path, row = where[sid]
        by_shard[path].append((row, sid))
    progress = Progress(log, n, "fingerprinted", every=2000)
    batch_pos: list[int] = []
    fields: list[np.ndarray] = []
    for path in sorted(by_shard):
        with ShardReader(path, "all") as reader:
            prof = reader.profile
            if views > int(prof["n_views"]):
                raise ValueError(f"fingerprints.views = {views} but the cache ({path}) has {prof['n_views']} views")
            for row, sid in sorted(by_shard[path]):
                arrays = reader.read(row, (t_key, hit_key, "udf_grid"))
                view_bits[pos[sid]] = view_hash_bits(
                    arrays[t_key],
                    arrays[hit_key],
                    views=views,
                    rays_per_view=int(prof["rays_per_view"]),
                    camera_radius=float(prof["camera_radius"]),
                    hash_size=hash_size,
                )
                batch_pos.append(pos[sid])
                fields.append(soft_occupancy(arrays["udf_grid"]))
                if len(batch_pos) == GEOMETRY_BATCH:
                    flush(batch_pos, fields)
                    batch_pos, fields = [], []
                progress.step()
    if batch_pos:
        flush(batch_pos, fields)
    return Hashes(ids, view_bits, GeometryCodes(plain, sym, variants, symmetry_inverses()), plain_hex, sym_hex)


def hash_images(ids: list[str], store: ItemStore, hash_size: int) -> Hashes:
    bits = np.zeros((len(ids), 1, hash_size * hash_size), dtype=bool)
    progress = Progress(log, len(ids), "fingerprinted", every=5000)
    for i, sid in enumerate(ids):
        row = store.row_of(sid)
        try:
            bits[i, 0] = image_hash_bits(store.image_bytes(row), hash_size)
        except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"{store.path}: item {sid} (row {row}) is not a readable image: {exc}") from exc
        progress.step()
    return Hashes(ids, bits, None, None, None)


def fingerprints_frame(h: Hashes) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "shape_id": pd.array(h.ids, dtype="string"),
            "view_hashes": [[bits_to_hex(v) for v in item] for item in h.view_bits],
            "geometry_hash": pd.array(
                h.geometry_hex if h.geometry_hex is not None else [None] * len(h.ids), dtype="string"
            ),
            "geometry_sym_hash": pd.array(
                h.geometry_sym_hex if h.geometry_sym_hex is not None else [None] * len(h.ids), dtype="string"
            ),
        }
    )


def log_groups(table: pd.DataFrame, n_pairs: int, n_rotated: int) -> None:
    multi = table[table["group_size"] > 1]
    n_groups = multi["group"].nunique()
    log.info(
        "%d items, %d near-duplicate pairs (%d only through the rotation-aware geometry distance); "
        "%d groups with more than one item hold %d items",
        len(table),
        n_pairs,
        n_rotated,
        n_groups,
        len(multi),
    )
    if len(multi):
        largest = multi.sort_values(["group_size", "group"], ascending=[False, True]).iloc[0]
        log.info("largest group: %s with %d items", largest["group"], largest["group_size"])
        if largest["group_size"] > max(10, 0.01 * len(table)):
            log.warning(
                "group %s has %d items: merges may be chaining; check the thresholds (duplicates.parquet "
                "shows each item's nearest neighbour and score)",
                largest["group"],
                largest["group_size"],
            )


def run(params: dict, manifest_path, cache_dir, items_dir, fingerprints_path, duplicates_path) -> pd.DataFrame:
    kind = params["source"]["kind"]
    fp = params["fingerprints"]
    ids_manifest = manifest_ids(manifest_path, kind)
    if kind == "image":
        store_path = Path(items_dir) / "items.h5"
        with ItemStore(store_path) as store:
            ids = _select(store.shape_ids, ids_manifest, str(store_path), manifest_path)
            hashes = hash_images(ids, store, int(fp["hash_size"]))
        rule = DuplicateRule(views=1, threshold=float(fp["threshold"]))
    elif kind in RAY_ARRAYS:
        cache_dir = Path(cache_dir)
        shards = [cache_dir / f"shard-{i:04d}.h5" for i in range(int(params["cache"]["shards"]))]
        where = locate_rows(cache_dir / "index.parquet", shards)
        ids = _select(list(where), ids_manifest, str(cache_dir / "index.parquet"), manifest_path)
        hashes = hash_cached_shapes(ids, where, kind, fp)
        rule = DuplicateRule(
            views=int(fp["views"]), threshold=float(fp["threshold"]), geometry_threshold=int(fp["geometry_threshold"])
        )
    else:
        raise ValueError(f"unknown dataset kind {kind!r}")

    n_items, n_views, n_bits = hashes.view_bits.shape
    view_codes = pack_codes(hashes.view_bits.reshape(n_items, n_views * n_bits))
    result = find_near_duplicates(view_codes, rule, hashes.geometry)
    if kind == "image":
        result = link_same_source(result, image_source_keys(manifest_path, ids))
    table = duplicates_table(ids, result)
    log_groups(table, result.n_pairs, result.n_rotated_pairs)
    meta = {
        "pipeline3d.fingerprints": json.dumps(
            {
                "kind": kind,
                "hash": "imagehash.phash",
                "hash_size": int(fp["hash_size"]),
                "views": rule.views,
                "geometry": None
                if kind == "image"
                else {
                    "signature": "simhash(exp(-udf/sigma) block mean, centred)",
                    "grid": GEOMETRY_GRID,
                    "bits": GEOMETRY_BITS,
                    "invariant_bits": SYM_BITS,
                    "sigma": GEOMETRY_SIGMA,
                    "symmetries": 48,
                },
            },
            sort_keys=True,
        )
    }
    rule_meta = {
        "pipeline3d.duplicate_rule": json.dumps(
            {
                "near_duplicate_if": "mean per-view Hamming <= threshold OR rotation-aware geometry Hamming <= "
                "geometry_threshold",
                "threshold": rule.threshold,
                "geometry_threshold": rule.geometry_threshold,
                "group": "connected component, id = smallest shape_id",
                "score": "min(distance / threshold, geometry_distance / geometry_threshold) to the nearest item",
            },
            sort_keys=True,
        )
    }
    write_parquet(fingerprints_path, fingerprints_frame(hashes), metadata=meta)
    write_parquet(duplicates_path, table, metadata=rule_meta)
    return table
