"""K stratified, group-aware folds over the non-test items (train + val of the ttv split)."""

from __future__ import annotations

import pandas as pd

from .common import assign_groups, family_salt


def make_kfold(items: pd.DataFrame, ttv: pd.DataFrame, k: int, seed: int, dataset: str) -> pd.DataFrame:
    """Columns shape_id, label, fold (0 .. k-1)."""
    pool = items[ttv["split"].isin(["train", "val"]).values]
    folds = assign_groups(pool, [1.0] * int(k), family_salt(seed, dataset, "kfold"))
    return pd.DataFrame(
        {
            "shape_id": pool["shape_id"].astype(str).values,
            "label": pool["label"].astype("int64").values,
            "fold": folds.astype("int64"),
        }
    )
