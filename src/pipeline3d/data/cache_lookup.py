"""Find where each cached shape lives: shape id -> (shard file, row).

The shards are the truth (each holds its own ``shape_id`` list); the index parquet says which shapes the cache
accepted. Only the index's ``shape_id`` column is relied on, and every id it lists must be found in exactly one
of the given shards, or the error names the index and the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py

from ..io.shards import validate_shard
from ..io.tables import read_parquet


def read_index_ids(index_path: str | Path) -> list[str]:
    index_path = Path(index_path)
    try:
        index = read_parquet(index_path, columns=["shape_id"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{index_path}: cannot read the cache index (need a shape_id column): {exc}") from exc
    ids = index["shape_id"].astype(str).tolist()
    if len(set(ids)) != len(ids):
        raise ValueError(f"{index_path}: the cache index lists some shape ids more than once")
    return ids


def locate_rows(index_path: str | Path, shard_paths: Sequence[str | Path]) -> dict[str, tuple[Path, int]]:
    """shape id -> (shard path, row) for every id of the index."""
    wanted = set(read_index_ids(index_path))
    where: dict[str, tuple[Path, int]] = {}
    for path in map(Path, shard_paths):
        reason = validate_shard(path)
        if reason:
            raise ValueError(f"{path}: invalid cache shard: {reason}")
        with h5py.File(path, "r") as h5:
            ids = [s.decode() if isinstance(s, bytes) else str(s) for s in h5["shape_id"][:]]
        for row, sid in enumerate(ids):
            if sid not in wanted:
                continue
            if sid in where:
                raise ValueError(f"{sid} is in two shards ({where[sid][0]} and {path}); index {index_path}")
            where[sid] = (path, row)
    missing = sorted(wanted - set(where))
    if missing:
        raise ValueError(
            f"{index_path}: {len(missing)} indexed shapes are in none of the {len(shard_paths)} shards "
            f"(first: {missing[:3]})"
        )
    return where
