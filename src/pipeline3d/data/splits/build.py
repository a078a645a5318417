"""Build and write every split family of one dataset (the make_splits stage)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from .common import load_items, log_counts, write_split
from .fewshot import make_fewshot
from .kfold import make_kfold
from .qg import make_qg
from .ttv import make_ttv
from .unpaired import NOT_MESH_NOTE, empty_unpaired, make_unpaired

log = logging.getLogger("pipeline3d.make_splits")

FAMILIES = ("ttv", "kfold", "unpaired", "fewshot", "qg")


def build_splits(items: pd.DataFrame, params: dict) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:
    """All families for the (shape-id sorted) items; returns tables and per-table metadata."""
    seed, dataset, kind = int(params["seed"]), params["dataset"], params["source"]["kind"]
    cfg = params["splits"]
    names = dict(zip(items["label"].astype(int), items["label_name"]))
    ttv = make_ttv(items, cfg, seed, dataset)
    if not (ttv["shape_id"].values == items["shape_id"].values).all():
        raise RuntimeError("ttv rows must align with the items")
    tables = {
        "ttv": ttv,
        "kfold": make_kfold(items, ttv, int(cfg["kfold"]), seed, dataset),
        "unpaired": (make_unpaired(items, ttv, cfg["unpaired"], seed, dataset) if kind == "mesh"
                     else empty_unpaired()),
        "fewshot": make_fewshot(items, ttv, [int(k) for k in cfg["fewshot_k"]],
                                [int(s) for s in cfg["fewshot_seeds"]], seed, dataset, names),
        "qg": make_qg(items, ttv, int(cfg["query_gallery_splits"]), int(cfg["query_per_class"]), seed, dataset,
                      names),
    }
    sort_keys = {"ttv": ["shape_id"], "kfold": ["shape_id"], "unpaired": ["shape_id"],
                 "fewshot": ["k", "seed", "role", "shape_id"], "qg": ["split_id", "role", "shape_id"]}
    tables = {f: t.sort_values(sort_keys[f], kind="stable").reset_index(drop=True) for f, t in tables.items()}
    base = {"dataset": dataset, "seed": seed, "splits": cfg, "source_split": bool((items["source_split"] != "").any())}
    meta = {f: dict(base) for f in FAMILIES}
    if kind != "mesh":
        meta["unpaired"]["note"] = NOT_MESH_NOTE.format(kind=kind)
    log_counts("ttv", tables["ttv"], "split", names)
    log_counts("kfold", tables["kfold"], "fold", names)
    if kind == "mesh":
        log_counts("unpaired", tables["unpaired"], "split", names)
    else:
        log.info("unpaired: %s", meta["unpaired"]["note"])
    log_counts("fewshot", tables["fewshot"], "role", names, extra=("k", "seed"))
    log_counts("qg", tables["qg"], "role", names, extra=("split_id",))
    return tables, meta


def run(params: dict, manifest_path, duplicates_path, out_dir) -> dict[str, pd.DataFrame]:
    items = load_items(manifest_path, duplicates_path)
    log.info("%d items in %d near-duplicate groups, %d classes", len(items), items["group"].nunique(),
             items["label"].nunique())
    tables, meta = build_splits(items, params)
    out_dir = Path(out_dir)
    for family in FAMILIES:
        write_split(out_dir / f"{family}.parquet", tables[family], family, meta[family])
    log.info("wrote %s", json.dumps({f: len(t) for f, t in tables.items()}, sort_keys=True))
    return tables
