"""Unpaired primitive split (reference spec section 2, with the section 10.3 fix applied downstream).

Per class, the train + val items are cut into train_mesh / train_pc / train_udf by the normalised fractions
(largest-remainder rounding, no empty bucket once a class has 3 items), whole near-duplicate groups at a time,
so no shape (nor a near-copy of it) is seen by two primitives. Test items become ``eval`` with every primitive.
materialize_unpaired then writes per-split shard files that physically hold only their primitive's arrays.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...contract import SPLIT_PRIMITIVE, UNPAIRED_BUCKETS
from .common import assign_groups, family_salt

BUCKETS = UNPAIRED_BUCKETS
COLUMNS = ("shape_id", "label", "split", "primitive")
NOT_MESH_NOTE = (
    "unpaired splits need the mesh-derived arrays (one shape per primitive); a {kind} dataset has no "
    "mesh, so this table is intentionally empty"
)


def empty_unpaired() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "shape_id": pd.Series([], dtype=str),
            "label": pd.Series([], dtype="int64"),
            "split": pd.Series([], dtype=str),
            "primitive": pd.Series([], dtype=str),
        }
    )


def make_unpaired(items: pd.DataFrame, ttv: pd.DataFrame, fractions: dict, seed: int, dataset: str) -> pd.DataFrame:
    weights = [float(fractions[b]) for b in BUCKETS]
    if sum(weights) <= 0:
        raise ValueError("splits.unpaired fractions must not all be 0")
    is_train = ttv["split"].isin(["train", "val"]).values
    is_eval = (ttv["split"] == "test").values
    pool = items[is_train]
    pick = assign_groups(pool, weights, family_salt(seed, dataset, "unpaired"))
    split = np.empty(len(items), dtype=object)
    split[is_train] = np.array(BUCKETS, dtype=object)[pick]
    split[is_eval] = "eval"
    keep = is_train | is_eval
    out = pd.DataFrame(
        {
            "shape_id": items["shape_id"].astype(str).values[keep],
            "label": items["label"].astype("int64").values[keep],
            "split": split[keep].astype(str),
        }
    )
    out["primitive"] = out["split"].map(SPLIT_PRIMITIVE)
    return out
