"""Which cached rows a (dataset, split) names: the bridge from split tables to the token datasets.

A selection is a list of ``CacheRow(shape_id, shard_path, row, label)`` in shape-id order, so it never depends
on shard layout or file order. Four sources:
- a ttv split (``train``/``val``/``test``/``all``) of a dataset's cache (index + shards),
- a few-shot subset (K, seed, role) from ``fewshot.parquet`` (K = 0 means the full ttv split),
- an N-way K-shot episode (setting, fold, role) from ``episodes.parquet``, labelled 0..N-1,
- a physically unpaired store (``train_mesh``/``train_pc``/``train_udf``): the store's own rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import pandas as pd

from ..io.shards import validate_shard
from ..io.tables import read_parquet
from .cache_lookup import locate_rows

TTV_SPLITS = ("train", "val", "test", "all")


@dataclass(frozen=True)
class CacheRow:
    shape_id: str
    shard_path: str
    row: int
    label: int


def _read_table(path: str | Path, columns: set[str]) -> pd.DataFrame:
    path = Path(path)
    try:
        table = read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the split table: {exc}") from exc
    missing = columns - set(table.columns)
    if missing:
        raise ValueError(f"{path}: lacks columns {sorted(missing)}")
    return table


def ttv_labels(ttv_path: str | Path, split: str) -> dict[str, int]:
    """shape id -> label for one ttv split (or all of them)."""
    if split not in TTV_SPLITS:
        raise ValueError(f"unknown split {split!r} (expected one of {TTV_SPLITS})")
    table = _read_table(ttv_path, {"shape_id", "label", "split"})
    if split != "all":
        table = table[table["split"] == split]
    return dict(zip(table["shape_id"].astype(str), table["label"].astype(int)))


def fewshot_labels(fewshot_path: str | Path, ttv_path: str | Path, *, k: int, seed: int, role: str) -> dict[str, int]:
    """shape id -> label of the K-shot ``role`` (train | val) subset; K = 0 is the full ttv split of that role.

    The few-shot validation subset holds at most K shapes per class (see splits.fewshot), so model selection at
    K = 1 never sees more labels than the K-shot budget.
    """
    if role not in ("train", "val"):
        raise ValueError(f"unknown few-shot role {role!r}")
    if k == 0:
        return ttv_labels(ttv_path, role)
    table = _read_table(fewshot_path, {"k", "seed", "shape_id", "label", "role"})
    rows = table[(table["k"] == k) & (table["seed"] == seed) & (table["role"] == role)]
    if rows.empty and role == "train":
        raise ValueError(f"{fewshot_path}: no few-shot subset for K={k}, seed={seed}")
    return dict(zip(rows["shape_id"].astype(str), rows["label"].astype(int)))


EPISODE_ROLES = ("support", "query")


def _episode_rows(episodes_path: str | Path, setting: str, fold: int) -> pd.DataFrame:
    table = _read_table(episodes_path, {"setting", "fold", "shape_id", "label", "episode_label", "role"})
    rows = table[(table["setting"] == setting) & (table["fold"] == fold)]
    if rows.empty:
        raise ValueError(
            f"{episodes_path}: no episode {setting} fold {fold} (a skipped setting or fold is named in "
            "the parquet metadata)"
        )
    return rows


def episode_labels(episodes_path: str | Path, *, setting: str, fold: int, role: str) -> dict[str, int]:
    """shape id -> episode label (0..N-1) of one role of one episode: ``support`` trains, ``query`` tests."""
    if role not in EPISODE_ROLES:
        raise ValueError(f"unknown episode role {role!r} (expected one of {EPISODE_ROLES})")
    rows = _episode_rows(episodes_path, setting, int(fold))
    rows = rows[rows["role"] == role]
    return dict(zip(rows["shape_id"].astype(str), rows["episode_label"].astype(int)))


def episode_classes(episodes_path: str | Path, *, setting: str, fold: int) -> list[int]:
    """The original labels of an episode's classes, indexed by episode label."""
    rows = _episode_rows(episodes_path, setting, int(fold)).drop_duplicates("episode_label")
    return [int(label) for label in rows.sort_values("episode_label")["label"]]


def cached_rows(labels: dict[str, int], index_path: str | Path, shard_paths: Sequence[str | Path]) -> list[CacheRow]:
    """The cache rows of the given shapes (sorted by id). Shapes the cache rejected are an error, named."""
    where = locate_rows(index_path, shard_paths)
    absent = sorted(set(labels) - set(where))
    if absent:
        raise ValueError(
            f"{len(absent)} shapes of the split are not in the cache {index_path} "
            f"(first: {absent[:3]}); was the cache built from another manifest?"
        )
    return [CacheRow(sid, str(where[sid][0]), int(where[sid][1]), int(labels[sid])) for sid in sorted(labels)]


def store_rows(store_path: str | Path) -> list[CacheRow]:
    """Every row of a physically unpaired store (labels unknown to pretraining: -1)."""
    store_path = Path(store_path)
    reason = validate_shard(store_path)
    if reason:
        raise ValueError(f"{store_path}: invalid unpaired store: {reason}")
    with h5py.File(store_path, "r") as h5:
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in h5["shape_id"][:]]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return [CacheRow(ids[i], str(store_path), i, -1) for i in order]
