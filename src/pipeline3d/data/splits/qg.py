"""Query / gallery splits over the test items (retrieval evaluation).

Per split, each class contributes ``query_per_class`` query groups (at most its group count - 1, so a query
always has a same-class item in the gallery; classes with fewer than 2 groups give no query). A query group is
represented by one member; its other members are left out of that split, because a near-copy of the query in
the gallery would make retrieval trivial. Everything else is gallery.
"""

from __future__ import annotations

import logging

import pandas as pd

from .common import family_salt, group_table, members_by_group, representative

log = logging.getLogger("pipeline3d.make_splits")


def make_qg(
    items: pd.DataFrame,
    ttv: pd.DataFrame,
    n_splits: int,
    per_class: int,
    seed: int,
    dataset: str,
    names: dict[int, str],
) -> pd.DataFrame:
    """Columns split_id, shape_id, label, role (query | gallery)."""
    test = items[(ttv["split"] == "test").values]
    by_group = members_by_group(test)
    rows = []
    skipped: set[int] = set()
    for split_id in range(int(n_splits)):
        salt = family_salt(seed, dataset, f"qg/{split_id}")
        groups = group_table(test, salt).sort_values(["primary", "key", "group"], kind="stable")
        query_groups: set[str] = set()
        for label, cls in groups.groupby("primary", sort=True):
            if len(cls) < 2:
                skipped.add(int(label))
                continue
            for gid in cls["group"].iloc[: min(int(per_class), len(cls) - 1)]:
                query_groups.add(gid)
                rows.append((split_id, representative(by_group[gid], int(label), salt), int(label), "query"))
        gallery = test[~test["group"].isin(query_groups)]
        rows += [(split_id, sid, int(lab), "gallery") for sid, lab in zip(gallery["shape_id"], gallery["label"])]
    if skipped:
        log.info(
            "qg: classes with fewer than 2 test groups get no queries: %s",
            sorted(names.get(c, str(c)) for c in skipped),
        )
    out = pd.DataFrame(rows, columns=["split_id", "shape_id", "label", "role"])
    if len(test) and not (out["role"] == "query").any():
        log.warning("qg: no class has 2 test groups, so there are no queries (retrieval cannot be evaluated)")
    return out.astype({"split_id": "int64", "label": "int64", "shape_id": str, "role": str})
