"""Train / val / test split, stratified by class, whole near-duplicate groups.

- Source without a split: train / val / test by the configured fractions (test = the rest).
- Source with a split (``source_split`` set): source test stays test and source val stays val (the official
  evaluation sets are never changed); val is carved from source train with fraction ``val`` of each class's
  source-train items (``train`` is then unused). A group that spans source splits keeps its test (or val)
  members; its lower-priority members become ``excluded`` (used nowhere), so a training shape never has a
  near-duplicate in the evaluation set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .common import assign_groups, family_salt

SPLITS = ("train", "val", "test")
PRIORITY = {"test": 0, "val": 1, "train": 2}


def make_ttv(items: pd.DataFrame, cfg: dict, seed: int, dataset: str) -> pd.DataFrame:
    """Columns shape_id, label, split (train | val | test | excluded); sorted by shape_id."""
    salt = family_salt(seed, dataset, "ttv")
    train_frac, val_frac = float(cfg["train"]), float(cfg["val"])
    split = pd.Series("", index=items.index, dtype=object)
    if (items["source_split"] != "").any():
        rank = items["source_split"].map(PRIORITY)
        best = rank.groupby(items["group"]).transform("min")
        fixed = items["source_split"].isin(["test", "val"]) & (rank == best)
        split[fixed] = items.loc[fixed, "source_split"]
        split[rank > best] = "excluded"
        free = split == ""  # source train, in groups with no evaluation member
        if (items["source_split"] == "val").any():
            split[free] = "train"  # the source defines its own val: carve nothing
        else:
            pick = assign_groups(items[free], [1.0 - val_frac, val_frac], salt)
            split[free] = np.array(["train", "val"], dtype=object)[pick]
    else:
        if train_frac + val_frac > 1.0 + 1e-9:
            raise ValueError(f"splits.train + splits.val = {train_frac + val_frac} > 1")
        pick = assign_groups(items, [train_frac, val_frac, max(0.0, 1.0 - train_frac - val_frac)], salt)
        split[:] = np.array(SPLITS, dtype=object)[pick]
    return pd.DataFrame(
        {
            "shape_id": items["shape_id"].astype(str).values,
            "label": items["label"].astype("int64").values,
            "split": split.astype(str).values,
        }
    )
