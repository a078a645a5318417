"""Shared machinery of the split families: inputs, seeded order, count allocation, group-aware assignment.

Principles (every family):
- The unit of assignment is a near-duplicate group (duplicates.parquet): a group never straddles two splits,
  folds, buckets or roles.
- Randomness: one draw per family from ``rng_for(seed, "make_splits", f"{dataset}/{family}")`` salts a stable
  hash of each group id; sorting by that hash is the shuffle. Nothing depends on list position, so shuffling
  the manifest rows changes no split, and a new item moves at most a few others (its class's counts change).
- Counts: per class, largest-remainder rounding of n * weights (never a negative or lost item), then the
  "no empty bucket" rule: when a class has at least as many items as there are buckets with a positive weight,
  an empty bucket takes one item from the largest (as the reference does for its unpaired split).
- Groups are placed largest first (ties in seeded order), each into the bucket with the largest item deficit
  for its classes, so per-class counts match the targets exactly for singletons and as closely as groups allow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...io.atomic import write_parquet
from ...io.tables import read_parquet
from ...rng import rng_for, stable_hash

log = logging.getLogger("pipeline3d.make_splits")

STAGE = "make_splits"
MANIFEST_COLUMNS = ("shape_id", "label", "source_split")
DUPLICATES_COLUMNS = ("shape_id", "group")
SOURCE_SPLITS = ("train", "val", "test", "")


def _read(path: str | Path, columns: Sequence[str], what: str) -> pd.DataFrame:
    path = Path(path)
    try:
        frame = read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the {what}: {exc}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: the {what} lacks columns {missing} (has {list(frame.columns)})")
    return frame


def load_items(manifest_path: str | Path, duplicates_path: str | Path) -> pd.DataFrame:
    """shape_id, label, label_name, source_split, group; sorted by shape_id.

    Manifest items without a fingerprint (rejected by the cache) are left out with a warning; fingerprints of
    items the manifest does not know are an error (the inputs come from different runs).
    """
    manifest = _read(manifest_path, MANIFEST_COLUMNS, "manifest")
    dups = _read(duplicates_path, DUPLICATES_COLUMNS, "duplicates table")
    try:
        labels = manifest["label"].astype("int64")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{manifest_path}: labels must be integers without gaps: {exc}") from exc
    items = pd.DataFrame(
        {
            "shape_id": manifest["shape_id"].astype(str),
            "label": labels,
            "label_name": (
                manifest["label_name"].astype(str) if "label_name" in manifest else manifest["label"].astype(str)
            ),
            "source_split": manifest["source_split"].fillna("").astype(str),
        }
    )
    if items["shape_id"].duplicated().any():
        dup = items.loc[items["shape_id"].duplicated(), "shape_id"].iloc[0]
        raise ValueError(f"{manifest_path}: shape id {dup!r} appears more than once")
    bad = sorted(set(items["source_split"]) - set(SOURCE_SPLITS))
    if bad:
        raise ValueError(f"{manifest_path}: unknown source_split values {bad} (expected train, val, test or '')")
    has_split = items["source_split"] != ""
    if has_split.any() and not has_split.all():
        raise ValueError(
            f"{manifest_path}: {int((~has_split).sum())} items have no source_split while "
            f"{int(has_split.sum())} have one; a dataset is either split by its source or not"
        )
    groups = pd.Series(dups["group"].astype(str).values, index=dups["shape_id"].astype(str).values)
    if groups.index.duplicated().any():
        raise ValueError(
            f"{duplicates_path}: shape id {groups.index[groups.index.duplicated()][0]!r} appears more than once"
        )
    unknown = sorted(set(groups.index) - set(items["shape_id"]))
    if unknown:
        raise ValueError(
            f"{duplicates_path}: {len(unknown)} fingerprinted items are not in {manifest_path} (first: {unknown[:3]})"
        )
    known = items["shape_id"].isin(groups.index)
    if not known.all():
        lost = items.loc[~known, "shape_id"].sort_values().tolist()
        log.warning(
            "%d manifest items have no fingerprint (not in the cache) and are left out of every split; first: %s",
            len(lost),
            lost[:5],
        )
        items = items[known]
    items = items.assign(group=groups.reindex(items["shape_id"]).values)
    return items.sort_values("shape_id", kind="stable").reset_index(drop=True)


def family_salt(seed: int, dataset: str, family: str) -> int:
    """The family's one random draw; everything else is a stable hash salted with it."""
    return int(rng_for(seed, STAGE, f"{dataset}/{family}").integers(0, 2**63 - 1))


def seeded_keys(keys: Sequence[str], salt: int) -> np.ndarray:
    return np.array([stable_hash(f"{salt}/{k}") for k in keys], dtype=np.uint64)


def allocate(n: int, weights: Sequence[float], tie_order: Sequence[int] | None = None) -> np.ndarray:
    """Largest-remainder counts of n items over buckets, then no positive-weight bucket left empty if n allows.

    ``tie_order`` ranks the buckets for equal remainders (default: bucket order). Callers pass a seeded order per
    class, otherwise the first bucket would get the extra item of every class (fold 0 of 5 equal folds would
    collect one extra item per class).
    """
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    rank = np.empty(len(w), dtype=np.int64)
    rank[np.asarray(tie_order if tie_order is not None else range(len(w)), dtype=np.int64)] = np.arange(len(w))
    counts = np.zeros(len(w), dtype=np.int64)
    if n <= 0 or w.sum() <= 0:
        return counts
    quota = n * w / w.sum()
    counts = np.floor(quota + 1e-9).astype(np.int64)
    frac = quota - counts
    for k in sorted(range(len(w)), key=lambda k: (-round(frac[k], 9), rank[k]))[: n - int(counts.sum())]:
        counts[k] += 1
    positive = w > 0
    if n >= positive.sum():
        while True:
            empty = np.nonzero(positive & (counts == 0))[0]
            if not len(empty):
                break
            largest = np.nonzero(counts == counts.max())[0]
            counts[largest[np.argmin(rank[largest])]] -= 1
            counts[empty[np.argmin(rank[empty])]] += 1
    return counts


def tie_order(salt: int, label: int, n_buckets: int) -> np.ndarray:
    """A seeded bucket order for one class (breaks rounding ties without favouring the first bucket)."""
    return np.argsort(seeded_keys([f"tie/{label}/{k}" for k in range(n_buckets)], salt), kind="stable")


def group_table(items: pd.DataFrame, salt: int) -> pd.DataFrame:
    """One row per group: group, size, primary label (most frequent, ties -> smallest), seeded key."""
    counts = items.groupby(["group", "label"]).size().rename("n").reset_index()
    counts = counts.sort_values(["group", "n", "label"], ascending=[True, False, True], kind="stable")
    primary = counts.drop_duplicates("group").set_index("group")["label"]
    sizes = items.groupby("group").size()
    groups = pd.DataFrame({"group": sizes.index.astype(str), "size": sizes.values.astype(np.int64)})
    groups["primary"] = primary.reindex(groups["group"]).values.astype(np.int64)
    groups["key"] = seeded_keys(groups["group"].tolist(), salt)
    return groups


def assign_groups(items: pd.DataFrame, weights: Sequence[float], salt: int) -> np.ndarray:
    """Bucket index per item (aligned with ``items``): stratified by class, whole groups, seeded."""
    if items.empty:
        return np.zeros(0, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    labels = np.sort(items["label"].unique())
    label_idx = np.searchsorted(labels, items["label"].to_numpy())
    sizes = np.bincount(label_idx, minlength=len(labels))
    target = np.stack([allocate(int(n), weights, tie_order(salt, int(c), len(weights))) for c, n in zip(labels, sizes)])
    current = np.zeros_like(target)
    group_idx, group_ids = pd.factorize(items["group"], sort=True)
    counts = np.zeros((len(group_ids), len(labels)), dtype=np.int64)
    np.add.at(counts, (group_idx, label_idx), 1)
    order = group_table(items, salt).sort_values(["size", "key", "group"], ascending=[False, True, True], kind="stable")
    blocked = np.where(weights > 0, 0.0, -np.inf)  # a zero-weight bucket never receives anything
    bucket = np.zeros(len(group_ids), dtype=np.int64)
    for g in group_ids.get_indexer(order["group"]):
        classes = np.nonzero(counts[g])[0]
        n = counts[g, classes]
        gain = n @ (target[classes] - current[classes]) + blocked
        b = int(np.argmax(gain))
        current[classes, b] += n
        bucket[g] = b
    return bucket[group_idx]


def members_by_group(items: pd.DataFrame) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for sid, label, gid in zip(items["shape_id"], items["label"], items["group"]):
        out.setdefault(gid, []).append((str(sid), int(label)))
    return out


def representative(members: list[tuple[str, int]], label: int, salt: int) -> str:
    """The member of a group that stands for it in a class (seeded, independent of row order)."""
    ids = [sid for sid, lab in members if lab == label]
    if len(ids) == 1:
        return ids[0]
    return min(ids, key=lambda sid: (stable_hash(f"{salt}/{sid}"), sid))


def log_counts(family: str, frame: pd.DataFrame, column: str, names: dict[int, str], extra: Sequence[str] = ()) -> None:
    """Counts per split (and per class) in the stage log."""
    by = [*extra, column]
    totals = frame.groupby(by).size()
    log.info(
        "%s: %d rows; per %s: %s",
        family,
        len(frame),
        "/".join(by),
        ", ".join(f"{'/'.join(map(str, k)) if isinstance(k, tuple) else k}={v}" for k, v in totals.items()),
    )
    if len(frame) and not extra:
        table = pd.crosstab(frame["label"], frame[column])
        table.index = [f"{label} {names.get(int(label), '')}".strip() for label in table.index]
        log.info("%s per class:\n%s", family, table.to_string())


def write_split(path: str | Path, frame: pd.DataFrame, family: str, info: dict) -> None:
    write_parquet(
        path,
        frame.reset_index(drop=True),
        metadata={"pipeline3d.split": json.dumps({"family": family, **info}, sort_keys=True)},
    )
