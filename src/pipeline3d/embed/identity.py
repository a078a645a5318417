"""Who may not be whose neighbour: an identity per embedding row for the difficulty bands.

Every row stands for one object, its *shape key*: the ``shape_id`` column when the file has one (a depth view's
shape, the object a caption describes), else the row id. Identities (``difficulty.identity``):

* ``label``: the row's ``label`` column, else the manifest label of its shape key;
* ``group``: the near-duplicate group (ttv ``group``, or the fingerprints' duplicates table) of the row id or
  of its shape key;
* ``none``: the shape key itself.

Under all three, rows of the same shape share an identity (views of one shape have one label and one group), so
two views of a shape are never each other's neighbours. Rows of no shape (class prompts) get their own identity
under ``group`` and ``none``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import pyarrow.parquet as pq

from ..io.tables import read_parquet
from .vectors import Embeddings

IDENTITIES = ("label", "group", "none")


def shape_keys(emb: Embeddings) -> list[str]:
    """The object each row shows: its ``shape_id`` column where set, else its id."""
    column = emb.columns.get("shape_id") if emb.id_column != "shape_id" else None
    if column is None:
        return list(emb.ids)
    return [str(s) if s not in (None, "") else i for i, s in zip(emb.ids, column)]


def _lookup(table: Mapping[str, Any], ids: Sequence[str], keys: Sequence[str], what: str, where: str) -> list[Any]:
    out, missing = [], []
    for row_id, key in zip(ids, keys):
        value = table.get(row_id, table.get(key))
        if value is None:
            missing.append(row_id)
        out.append(value)
    if missing:
        raise ValueError(f"{len(missing)} embedding rows have no {what} in {where} (first: {missing[:3]})")
    return out


def _group_table(ttv: str | Path, duplicates: str | Path | None) -> pd.DataFrame:
    """shape_id + group: from the ttv table, or from the fingerprints' duplicates table when ttv has no groups."""
    for path in (ttv, duplicates):
        if path is None:
            continue
        try:
            if {"shape_id", "group"} <= set(pq.read_schema(path).names):
                return read_parquet(path, columns=["shape_id", "group"])
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read near-duplicate groups: {exc}") from exc
    raise ValueError(
        f"difficulty.identity = group needs near-duplicate groups: {ttv} has no 'group' column"
        + ("" if duplicates is None else f" and neither has {duplicates}")
    )


def row_identity(
    emb: Embeddings, how: str, *, manifest: str | Path, ttv: str | Path, duplicates: str | Path | None = None
) -> list[str]:
    """One identity string per row of ``emb`` (equal strings are never neighbours).

    Groups come from the ttv table's ``group`` column, else from ``duplicates`` (fingerprints' duplicates.parquet).
    """
    if how not in IDENTITIES:
        raise ValueError(f"difficulty.identity must be one of {IDENTITIES}, got {how!r}")
    keys = shape_keys(emb)
    if how == "none":
        return [f"shape:{k}" for k in keys]
    if how == "label":
        if "label" in emb.columns and all(v is not None for v in emb.columns["label"]):
            labels = emb.columns["label"]
        else:
            table = read_parquet(manifest, columns=["shape_id", "label"])
            labels = _lookup(
                dict(zip(table["shape_id"].astype(str), table["label"].astype(int))),
                emb.ids,
                keys,
                "label",
                str(manifest),
            )
        return [f"label:{int(v)}" for v in labels]
    table = _group_table(ttv, duplicates)
    groups = dict(zip(table["shape_id"].astype(str), table["group"].astype(str)))
    out = []
    for row_id, key in zip(emb.ids, keys):
        group = groups.get(row_id, groups.get(key))
        # rows of no split item (class prompts, captions of objects outside the split table) stand for themselves
        out.append(f"group:{group}" if group is not None else f"shape:{key}")
    return out
