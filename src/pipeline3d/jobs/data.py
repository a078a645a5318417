"""Token datasets for the training jobs, built from a rule's named input files.

The pretrain rule names its inputs per corpus component ``c<i>_split`` / ``c<i>_index`` / ``c<i>_shards`` (a ttv
split of a dataset's cache) or ``c<i>_store`` (a physically unpaired store); see workflow/rules/common.smk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..contract import UNPAIRED_BUCKETS
from ..data.selection import CacheRow, cached_rows, store_rows, ttv_labels
from ..tokens.dataset import CacheEntry, ShapeTokenDataset

UNPAIRED = UNPAIRED_BUCKETS


def entries_of(rows: Sequence[CacheRow]) -> list[CacheEntry]:
    return [CacheEntry(r.shape_id, r.shard_path, r.row, r.label) for r in rows]


def component_rows(i: int, part: Mapping[str, Any], files: Mapping[str, Any]) -> list[CacheRow]:
    """The cache rows of corpus component ``i`` (its split of its dataset)."""
    try:
        if part["split"] in UNPAIRED:
            return store_rows(files[f"c{i}_store"])
        labels = ttv_labels(files[f"c{i}_split"], part["split"])
        return cached_rows(labels, files[f"c{i}_index"], files[f"c{i}_shards"])
    except KeyError as exc:
        raise ValueError(
            f"corpus component {i} ({part['dataset']}/{part['split']}): the job was given no {exc} input"
        ) from None


def corpus_datasets(
    corpus: Sequence[Mapping[str, Any]],
    files: Mapping[str, Any],
    tok_cfg: Mapping[str, Any],
    *,
    seed: int,
    occ_grid: int = 0,
    two_views: bool = False,
    augment: Mapping[str, Any] | None = None,
) -> list[tuple[ShapeTokenDataset, float]]:
    """(dataset, weight) per corpus component, in training mode. An empty component is an error, named."""
    out = []
    for i, part in enumerate(corpus):
        rows = component_rows(i, part, files)
        if not rows:
            raise ValueError(f"corpus component {i} ({part['dataset']}/{part['split']}) has no shapes")
        ds = ShapeTokenDataset(
            entries_of(rows),
            part["backend"],
            tok_cfg,
            seed=seed,
            mode="train",
            occ_grid=occ_grid,
            two_views=two_views,
            augment=augment,
        )
        out.append((ds, float(part.get("weight", 1.0))))
    return out
