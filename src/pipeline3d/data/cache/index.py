"""The cache index: validate every shard deeply, map shape id -> (shard, row), collect the failed shapes."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import pandas as pd

from ...io.cache_schema import profile_of
from ...io.h5integrity import read_ids
from ...io.shards import shard_failures, shard_of, validate_shard

SHARD_NAME = re.compile(r"shard-(\d+)\.h5")
INDEX_COLUMNS = ("shape_id", "shard", "shard_file", "row")
REJECT_COLUMNS = ("source", "stage", "reason", "detail")


class InvalidShards(ValueError):
    """Some shards cannot be indexed; ``damaged`` lists the files that must be rebuilt (the others name problems of
    the file list itself)."""

    def __init__(self, message: str, damaged: list[Path]) -> None:
        super().__init__(message)
        self.damaged = damaged


def _read_ids(path: Path) -> tuple[list[str], int]:
    with h5py.File(path, "r") as h5:
        return read_ids(h5, path), int(h5.attrs["n_shards"])


def build_index(shard_paths: list[str | Path], dataset: str, cache_cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(index, rejects) of one dataset's shards; ``InvalidShards`` naming every bad file and why.

    Each shard must be complete, uncorrupted (deep check), of this dataset and cache profile, numbered as its file
    name says, built for ``cache.shards`` shards, and hold only ids that hash to it; shard numbers 0..n-1 must each
    appear exactly once, and no id may appear twice.
    """
    profile = profile_of(cache_cfg)
    n_shards = int(cache_cfg["shards"])
    problems: list[str] = []
    damaged: list[Path] = []
    seen: dict[int, Path] = {}
    rows: list[tuple[str, int, str, int]] = []
    rejects: list[tuple[str, str, str, str]] = []
    for path in map(Path, shard_paths):
        match = SHARD_NAME.fullmatch(path.name)
        if not match:
            problems.append(f"{path}: not a shard file name (expected shard-NNNN.h5)")
            continue
        number = int(match.group(1))
        if number in seen:
            problems.append(f"{path}: shard {number} is also given as {seen[number]}")
            continue
        seen[number] = path
        reason = validate_shard(path, dataset=dataset, shard=number, profile=profile, deep=True)
        if not reason:
            ids, built_for = _read_ids(path)
            strays = [sid for sid in ids if shard_of(sid, n_shards) != number]
            if built_for != n_shards:
                reason = f"built for {built_for} shards, but cache.shards is {n_shards}"
            elif strays:
                reason = f"{len(strays)} shape ids belong to other shards (first: {strays[0]})"
        if reason:
            problems.append(f"{path}: invalid cache shard: {reason}")
            damaged.append(path)
            continue
        rows += [(sid, number, path.name, row) for row, sid in enumerate(ids)]
        rejects += [(sid, "cache", reason, detail) for sid, reason, detail in shard_failures(path)]
    missing = sorted(set(range(n_shards)) - set(seen))
    if missing:
        problems.append(f"shards {missing} of {n_shards} were not given")
    index = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    duplicated = index["shape_id"][index["shape_id"].duplicated()].tolist()
    if duplicated:
        problems.append(f"{len(duplicated)} shape ids are in more than one shard (first: {duplicated[0]})")
    if problems:
        raise InvalidShards("cache index not written:\n  " + "\n  ".join(problems), damaged)
    index = index.sort_values("shape_id", kind="stable").reset_index(drop=True)
    index = index.astype({"shape_id": "string", "shard": "int64", "shard_file": "string", "row": "int64"})
    reject_table = pd.DataFrame(sorted(rejects), columns=list(REJECT_COLUMNS)).astype("string")
    return index, reject_table
