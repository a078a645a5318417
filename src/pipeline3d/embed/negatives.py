"""Vectorised triplet sampling tables: same-label positives and per-band negatives as CSR arrays.

Both tables index a *pool* of items (e.g. the train split of an embedding space): row ``i`` is pool item ``i``.

* ``BandNegatives``: the difficulty band table (anchor_id, band, neighbour_id, rank, ...) as one CSR matrix whose
  row ``band * n_pool + i`` lists the pool indices of item ``i``'s neighbours in that band, in rank order.
  Neighbours outside the pool (e.g. val/test items: training must never see them) and neighbours sharing the
  anchor's label (possible when the bands were built with ``identity: group`` or ``none``; they are not negatives)
  are dropped. ``source_band[b, i]`` is the band actually sampled when band ``b`` is asked for: ``b`` itself when
  it has neighbours, else the nearest non-empty band (by position in the hardest-first list; a tie goes to the
  harder band, so a fallback never makes the batch easier than it has to), -1 when item ``i`` has none at all.
* ``SameLabelPositives``: the pool sorted by label, so a uniform draw of another same-label item is one gather.

Sampling takes a ``torch.Generator`` so a training step's draws are a function of the step's generator only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class BandNegatives:
    bands: tuple[str, ...]
    n_pool: int
    indptr: np.ndarray  # (n_bands * n_pool + 1,) int64
    indices: np.ndarray  # (nnz,) int64 pool indices, rank order within a row
    source_band: np.ndarray  # (n_bands, n_pool) int64; -1: no neighbour in any band
    dropped: dict[str, int]  # pairs left out, by reason

    def counts(self) -> np.ndarray:
        """(n_bands, n_pool) number of negatives of each item in each band."""
        return np.diff(self.indptr).reshape(len(self.bands), self.n_pool)

    def has_any(self) -> np.ndarray:
        """(n_pool,) bool: the item has a negative in at least one band."""
        return self.source_band[0] >= 0

    def band_index(self, band: str) -> int:
        try:
            return self.bands.index(band)
        except ValueError:
            raise ValueError(f"unknown band {band!r}; bands are {list(self.bands)}") from None


def build_band_negatives(
    table: pd.DataFrame, bands: Sequence[str], pool_ids: Sequence[str], pool_labels: np.ndarray
) -> BandNegatives:
    """CSR negatives of the pool items from a difficulty band table (see the module docstring)."""
    bands = tuple(str(b) for b in bands)
    missing = {"anchor_id", "band", "neighbour_id", "rank"} - set(table.columns)
    if missing:
        raise ValueError(f"difficulty table lacks column(s) {sorted(missing)}")
    unknown = sorted(set(table["band"].astype(str)) - set(bands))
    if unknown:
        raise ValueError(f"difficulty table has band(s) {unknown} that are not in {list(bands)}")
    pool_labels = np.asarray(pool_labels, dtype=np.int64)
    n_pool = len(pool_ids)
    if pool_labels.shape != (n_pool,):
        raise ValueError(f"{n_pool} pool ids but labels of shape {pool_labels.shape}")
    row_of = pd.Series(np.arange(n_pool, dtype=np.int64), index=pd.Index(list(pool_ids), dtype=object))
    anchor = row_of.reindex(table["anchor_id"].astype(str).to_numpy()).to_numpy()
    neighbour = row_of.reindex(table["neighbour_id"].astype(str).to_numpy()).to_numpy()
    band = pd.Categorical(table["band"].astype(str), categories=list(bands)).codes.astype(np.int64)
    rank = table["rank"].to_numpy(dtype=np.int64)

    in_pool = ~np.isnan(anchor) & ~np.isnan(neighbour)
    anchor_ok = ~np.isnan(anchor)
    dropped = {
        "anchor_outside_pool": int((~anchor_ok).sum()),
        "neighbour_outside_pool": int((anchor_ok & np.isnan(neighbour)).sum()),
    }
    anchor, neighbour, band, rank = (
        anchor[in_pool].astype(np.int64),
        neighbour[in_pool].astype(np.int64),
        band[in_pool],
        rank[in_pool],
    )
    same_label = pool_labels[anchor] == pool_labels[neighbour]
    dropped["same_label"] = int(same_label.sum())
    keep = ~same_label
    anchor, neighbour, band, rank = anchor[keep], neighbour[keep], band[keep], rank[keep]

    rows = band * n_pool + anchor
    order = np.lexsort((neighbour, rank, rows))  # row, then rank (ties by pool index): a fixed layout
    indptr = np.zeros(len(bands) * n_pool + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(bands) * n_pool), out=indptr[1:])
    negatives = BandNegatives(
        bands,
        n_pool,
        indptr,
        neighbour[order].astype(np.int64),
        _fallbacks(np.diff(indptr).reshape(len(bands), n_pool)),
        dropped,
    )
    if any(dropped.values()):
        LOG.info("band negatives: left out %s", ", ".join(f"{v} pairs ({k})" for k, v in dropped.items() if v))
    return negatives


def _fallbacks(counts: np.ndarray) -> np.ndarray:
    """(n_bands, n_pool): the nearest non-empty band for each requested band (ties: the harder one), -1 if none."""
    n_bands, n_pool = counts.shape
    source = np.full((n_bands, n_pool), -1, dtype=np.int64)
    for b in range(n_bands):
        # candidates ordered by distance from b, the harder one first on a tie
        for c in sorted(range(n_bands), key=lambda c: (abs(c - b), c)):
            take = (source[b] < 0) & (counts[c] > 0)
            source[b, take] = c
    return source


def sample_negatives(
    negatives: "BandNegativeTensors", band: int, anchors: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniform negative per anchor from band ``band`` (or its fallback) -> (pool indices, used fallback)."""
    source = negatives.source_band[band, anchors]
    if bool((source < 0).any()):
        raise ValueError("an anchor without any band negative was sampled; anchors must have at least one")
    rows = source * negatives.n_pool + anchors
    start = negatives.indptr[rows]
    count = negatives.indptr[rows + 1] - start
    u = torch.rand(anchors.shape[0], generator=generator, device=anchors.device, dtype=torch.float64)
    offset = torch.minimum((u * count).long(), count - 1)
    return negatives.indices[start + offset], source != band


@dataclass
class BandNegativeTensors:
    """``BandNegatives`` as torch tensors (for sampling inside a training step)."""

    n_pool: int
    indptr: torch.Tensor
    indices: torch.Tensor
    source_band: torch.Tensor

    @classmethod
    def of(cls, negatives: BandNegatives) -> "BandNegativeTensors":
        return cls(
            negatives.n_pool,
            torch.from_numpy(negatives.indptr),
            torch.from_numpy(negatives.indices),
            torch.from_numpy(negatives.source_band),
        )


@dataclass(frozen=True)
class SameLabelPositives:
    """Pool items grouped by label: for item i, its group is ``order[start[i] : start[i] + size[i]]`` and it sits at
    position ``slot[i]`` of that group."""

    order: np.ndarray
    start: np.ndarray
    size: np.ndarray
    slot: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray) -> "SameLabelPositives":
        labels = np.asarray(labels, dtype=np.int64)
        order = np.argsort(labels, kind="stable").astype(np.int64)
        sorted_labels = labels[order]
        first = np.searchsorted(sorted_labels, labels, side="left")
        last = np.searchsorted(sorted_labels, labels, side="right")
        slot = np.empty(len(labels), dtype=np.int64)
        slot[order] = np.arange(len(labels)) - first[order]
        return cls(order, first.astype(np.int64), (last - first).astype(np.int64), slot)

    def has_positive(self) -> np.ndarray:
        return self.size >= 2

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(getattr(self, name)) for name in ("order", "start", "size", "slot")}


def sample_positives(
    tables: dict[str, torch.Tensor], anchors: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """One uniform other same-label pool item per anchor (anchors must have one)."""
    size = tables["size"][anchors]
    if bool((size < 2).any()):
        raise ValueError("an anchor without a same-label positive was sampled")
    u = torch.rand(anchors.shape[0], generator=generator, device=anchors.device, dtype=torch.float64)
    pick = torch.minimum((u * (size - 1)).long(), size - 2)
    pick = pick + (pick >= tables["slot"][anchors]).long()  # skip the anchor itself
    return tables["order"][tables["start"][anchors] + pick]
