"""Per-primitive unpaired stores: shard files that physically hold only what their primitive may see.

Fixes reference weak spot 10.3 (a train_pc "split" was a symlink to the full cache entry, mesh distances
included). ``materialize`` copies the rows of one unpaired split into a new shard whose arrays are exactly
``PRIMITIVE_ARRAYS[primitive]`` (train_pc -> pc_xyz, pool_dist_pc, ray_*_pc, ...), reading the source through
``ShardReader(path, primitive)``, which refuses every other array. The store is an ordinary cache shard
(validate_shard / ShardReader work on it) with ``unpaired_split`` and ``primitive`` attributes; rows are in
shape-id order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import h5py

from ..contract import SPLIT_PRIMITIVE
from ..io.atomic import atomic_path
from ..io.cache_schema import PRIMITIVE_ARRAYS
from ..io.h5integrity import seal_attrs
from ..io.shards import ShardReader, ShardWriter, array_codecs, profile_hash
from ..io.tables import read_parquet
from ..log import Progress
from .cache_lookup import locate_rows

log = logging.getLogger(__name__)


def split_ids(unpaired_path: str | Path, split: str) -> list[str]:
    unpaired_path = Path(unpaired_path)
    table = read_parquet(unpaired_path)
    missing = {"shape_id", "split", "primitive"} - set(table.columns)
    if missing:
        raise ValueError(f"{unpaired_path}: lacks columns {sorted(missing)}")
    rows = table[table["split"] == split]
    wrong = rows[rows["primitive"] != SPLIT_PRIMITIVE[split]]
    if len(wrong):
        raise ValueError(
            f"{unpaired_path}: split {split} rows with primitive {wrong['primitive'].iloc[0]!r}, "
            f"expected {SPLIT_PRIMITIVE[split]!r}"
        )
    return sorted(rows["shape_id"].astype(str))


def materialize(
    split: str,
    unpaired_path: str | Path,
    index_path: str | Path,
    shard_paths: Sequence[str | Path],
    out: str | Path,
    *,
    dataset: str,
    cache_profile: dict | None = None,
    compression: str = "gzip",
) -> int:
    """Write the store of one unpaired split (``compression``: cache.compression); returns the number of shapes."""
    if split not in SPLIT_PRIMITIVE:
        raise ValueError(f"unknown unpaired split {split!r} (expected one of {sorted(SPLIT_PRIMITIVE)})")
    primitive = SPLIT_PRIMITIVE[split]
    ids = split_ids(unpaired_path, split)
    where = locate_rows(index_path, shard_paths)
    absent = [sid for sid in ids if sid not in where]
    if absent:
        raise ValueError(
            f"{unpaired_path}: {len(absent)} shapes of split {split} are not in the cache index "
            f"{index_path} (first: {absent[:3]})"
        )
    readers: dict[Path, ShardReader] = {}
    try:
        for p in shard_paths:
            readers[Path(p)] = ShardReader(p, primitive)
        first = next(iter(readers.values()))
        profile, kind = first.profile, str(first.attrs["kind"])
        for path, reader in readers.items():
            if profile_hash(reader.profile) != profile_hash(profile):
                raise ValueError(f"{path}: built with another cache profile than {first.path}")
        if cache_profile is not None and profile_hash(cache_profile) != profile_hash(profile):
            raise ValueError(f"{first.path}: the cache was built with another profile than the config's")
        # Exactly the primitive's arrays, in schema order (a point-cloud cache simply lacks mesh arrays).
        keys = tuple(k for k in PRIMITIVE_ARRAYS[primitive] if k in first.allowed)
        log.info("split %s -> primitive %s: %d shapes, arrays %s", split, primitive, len(ids), list(keys))
        progress = Progress(log, len(ids), "copied", every=2000)
        out = Path(out)
        with atomic_path(out) as tmp:
            with ShardWriter(
                tmp,
                dataset=dataset,
                shard=0,
                n_shards=1,
                kind=kind,
                profile=profile,
                keys=keys,
                compression=array_codecs(compression),
            ) as writer:
                for sid in ids:
                    path, row = where[sid]
                    writer.append(sid, readers[Path(path)].read(row, keys))
                    progress.step()
            with h5py.File(tmp, "r+") as h5:
                h5.attrs.update(
                    unpaired_split=split, primitive=primitive, source_shards=json.dumps([str(p) for p in shard_paths])
                )
                seal_attrs(h5)  # the attributes changed after the writer sealed them
    finally:
        for reader in readers.values():
            reader.close()
    return len(ids)


def open_unpaired(path: str | Path) -> ShardReader:
    """A reader of an unpaired store restricted to the primitive recorded in the file."""
    with h5py.File(path, "r") as h5:
        primitive = h5.attrs.get("primitive")
    if primitive not in PRIMITIVE_ARRAYS:
        raise ValueError(f"{path}: not an unpaired store (no primitive attribute)")
    return ShardReader(path, str(primitive))
