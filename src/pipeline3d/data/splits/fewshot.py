"""Few-shot subsets: for each K and few-shot seed, K shots per class from the ttv train split, plus a small
validation role.

Fixes reference weak spot 7 (a full 10% val split turned K = 1 runs into many-label runs): the ``val`` role
holds at most K items per class, disjoint from the shots, so model selection never sees more labels than the
shot budget again. Shots take priority: a class with fewer than 2K groups gets fewer (possibly no) val items,
and a class with fewer than K groups gets all of them as shots (logged).

Per (seed, class), the class's groups (by primary label) are put in one seeded order; shots are the first K
groups and val the last min(K, rest) groups, so shots are nested across K (K=1 shots are among the K=5 shots)
and the order does not depend on K. A group contributes one representative member, so two shots are never
near-copies of each other.
"""

from __future__ import annotations

import logging

import pandas as pd

from .common import family_salt, group_table, members_by_group, representative

log = logging.getLogger("pipeline3d.make_splits")


def make_fewshot(
    items: pd.DataFrame,
    ttv: pd.DataFrame,
    ks: list[int],
    seeds: list[int],
    seed: int,
    dataset: str,
    names: dict[int, str],
) -> pd.DataFrame:
    """Columns k, seed, shape_id, label, role (train | val)."""
    train = items[(ttv["split"] == "train").values]
    by_group = members_by_group(train)
    rows = []
    short: dict[int, dict[str, int]] = {}  # K -> {class: groups available}, the same for every seed
    for fs_seed in seeds:
        salt = family_salt(seed, dataset, f"fewshot/seed{fs_seed}")
        groups = group_table(train, salt).sort_values(["primary", "key", "group"], kind="stable")
        for label, cls in groups.groupby("primary", sort=True):
            ordered = [representative(by_group[g], int(label), salt) for g in cls["group"]]
            n = len(ordered)
            for k in ks:
                shots = min(k, n)
                n_val = min(k, n - shots)
                if n < 2 * k:
                    short.setdefault(int(k), {})[names.get(int(label), str(label))] = n
                roles = [("train", sid) for sid in ordered[:shots]] + [("val", sid) for sid in ordered[n - n_val :]]
                rows += [(int(k), int(fs_seed), sid, int(label), role) for role, sid in roles]
    for k, classes in sorted(short.items()):
        log.info(
            "fewshot K=%d: %d classes have fewer than 2K train groups, so fewer val (and if < K, fewer shot) items: %s",
            k,
            len(classes),
            ", ".join(f"{c}={n}" for c, n in sorted(classes.items())),
        )
    out = pd.DataFrame(rows, columns=["k", "seed", "shape_id", "label", "role"])
    return out.astype({"k": "int64", "seed": "int64", "label": "int64", "shape_id": str, "role": str})
