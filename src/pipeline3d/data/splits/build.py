"""Build and write every split family of one dataset (the make_splits stage)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ...contract import SPLIT_FAMILIES
from .common import load_items, log_counts, write_split
from .episodes import make_episodes
from .fewshot import make_fewshot
from .kfold import make_kfold
from .qg import make_qg
from .ttv import make_ttv
from .unpaired import NOT_MESH_NOTE, empty_unpaired, make_unpaired

log = logging.getLogger("pipeline3d.make_splits")

FAMILIES = SPLIT_FAMILIES
# The splits keys each family depends on (every family is carved from ttv, hence train/val). The workflow runs one
# job per family with only these keys in its params, so e.g. a new fold count never touches the few-shot subsets
# (nor retrains the models that read them).
FAMILY_KEYS = {
    "ttv": ("train", "val"),
    "kfold": ("train", "val", "kfold"),
    "unpaired": ("train", "val", "unpaired"),
    "fewshot": ("train", "val", "fewshot_k", "fewshot_seeds"),
    "qg": ("train", "val", "query_gallery_splits", "query_per_class"),
    "episodes": ("train", "val", "episodes"),
}


def build_splits(items: pd.DataFrame, params: dict, families=None) -> tuple[dict[str, pd.DataFrame], dict[str, dict]]:
    """The requested families for the (shape-id sorted) items; returns tables and per-table metadata.
    ``params["splits"]`` needs only the keys of those families (FAMILY_KEYS). By default every family whose keys
    the params hold (params written before a family existed still build the others); a requested family whose keys
    are missing is an error naming them."""
    cfg = params["splits"]
    if families is None:
        families = [f for f in FAMILIES if all(k in cfg for k in FAMILY_KEYS[f])]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown split families {unknown} (known: {', '.join(FAMILIES)})")
    missing = {f: [k for k in FAMILY_KEYS[f] if k not in cfg] for f in families}
    if any(missing.values()):
        raise ValueError(
            "params.splits lacks the keys of the requested families: "
            + ", ".join(f"{f}: {keys}" for f, keys in missing.items() if keys)
        )
    seed, dataset, kind = int(params["seed"]), params["dataset"], params["source"]["kind"]
    names = dict(zip(items["label"].astype(int), items["label_name"]))
    ttv = make_ttv(items, cfg, seed, dataset)
    if not (ttv["shape_id"].values == items["shape_id"].values).all():
        raise RuntimeError("ttv rows must align with the items")
    makers = {
        "ttv": lambda: ttv,
        "kfold": lambda: make_kfold(items, ttv, int(cfg["kfold"]), seed, dataset),
        "unpaired": lambda: (
            make_unpaired(items, ttv, cfg["unpaired"], seed, dataset) if kind == "mesh" else empty_unpaired()
        ),
        "fewshot": lambda: make_fewshot(
            items, ttv, [int(k) for k in cfg["fewshot_k"]], [int(s) for s in cfg["fewshot_seeds"]], seed, dataset, names
        ),
        "qg": lambda: make_qg(
            items, ttv, int(cfg["query_gallery_splits"]), int(cfg["query_per_class"]), seed, dataset, names
        ),
        "episodes": lambda: make_episodes(
            items,
            ttv,
            list(cfg["episodes"]["settings"]),
            int(cfg["episodes"]["folds"]),
            int(cfg["episodes"]["query_per_class"]),
            seed,
            dataset,
            names,
        ),
    }
    tables = {family: makers[family]() for family in FAMILIES if family in families}
    notes = {f: t.attrs.get("notes") for f, t in tables.items() if t.attrs.get("notes")}  # before sorting
    sort_keys = {
        "ttv": ["shape_id"],
        "kfold": ["shape_id"],
        "unpaired": ["shape_id"],
        "fewshot": ["k", "seed", "role", "shape_id"],
        "qg": ["split_id", "role", "shape_id"],
        "episodes": ["way", "shot", "fold", "role", "shape_id"],
    }
    tables = {f: t.sort_values(sort_keys[f], kind="stable").reset_index(drop=True) for f, t in tables.items()}
    source_split = bool((items["source_split"] != "").any())
    meta = {
        f: {
            "dataset": dataset,
            "seed": seed,
            "source_split": source_split,
            "splits": {k: cfg[k] for k in FAMILY_KEYS[f]},
        }
        for f in tables
    }
    if "unpaired" in tables and kind != "mesh":
        meta["unpaired"]["note"] = NOT_MESH_NOTE.format(kind=kind)
    for family, note in notes.items():
        meta[family]["notes"] = note
    log_counts("ttv", ttv, "split", names)
    if "kfold" in tables:
        log_counts("kfold", tables["kfold"], "fold", names)
    if "unpaired" in tables:
        if kind == "mesh":
            log_counts("unpaired", tables["unpaired"], "split", names)
        else:
            log.info("unpaired: %s", meta["unpaired"]["note"])
    if "fewshot" in tables:
        log_counts("fewshot", tables["fewshot"], "role", names, extra=("k", "seed"))
    if "qg" in tables:
        log_counts("qg", tables["qg"], "role", names, extra=("split_id",))
    if "episodes" in tables:
        log_counts("episodes", tables["episodes"], "role", names, extra=("setting", "fold"))
    return tables, meta


def run(params: dict, manifest_path, duplicates_path, out_dir, families=None) -> dict[str, pd.DataFrame]:
    items = load_items(manifest_path, duplicates_path)
    log.info(
        "%d items in %d near-duplicate groups, %d classes",
        len(items),
        items["group"].nunique(),
        items["label"].nunique(),
    )
    tables, meta = build_splits(items, params, families)
    out_dir = Path(out_dir)
    for family in tables:
        write_split(out_dir / f"{family}.parquet", tables[family], family, meta[family])
    log.info("wrote %s", json.dumps({f: len(t) for f, t in tables.items()}, sort_keys=True))
    return tables
