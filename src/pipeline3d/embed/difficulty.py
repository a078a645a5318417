"""Difficulty bands: every anchor's nearest neighbours split into named bands (e.g. hard / medium / easy).

Two ways to cut, chosen in the config:

* ``by: rank``: a band is an inclusive range of 1-based neighbour ranks (``hard: [1, 10]``), per anchor;
* ``by: quantile``: a band is a range ``[lo, hi)`` of the pair's difficulty quantile over *all* anchor-neighbour
  pairs, where 0 is the hardest (most similar) pair: ``p = (number of pairs strictly harder) / (number of pairs)``.
  Equal similarities share ``p`` and hence a band, so the cut does not depend on the order of ties.

Bands are ordered hardest first by their lower bound (so a mapping whose keys were sorted, as the rules' canonical
JSON params are, means the same bands) and may not overlap; gaps are allowed (e.g. skipping ranks 1-2 to avoid near
duplicates that are probably false negatives). Neighbours outside every band are dropped. Same-identity items are
never neighbours (see ``knn.knn``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from ..io.atomic import write_parquet
from .knn import Metric, Neighbours, knn

LOG = logging.getLogger(__name__)

BandBy = Literal["rank", "quantile"]
COLUMNS = ("anchor_id", "band", "neighbour_id", "rank")  # + "similarity" (cosine) or "distance" (euclidean)
METADATA_KEY = "pipeline3d.difficulty"


@dataclass(frozen=True)
class Band:
    """One band: ranks ``lo..hi`` inclusive (``by: rank``) or difficulty quantiles ``[lo, hi)`` (``by: quantile``)."""

    name: str
    lo: float
    hi: float


@dataclass(frozen=True)
class BandSpec:
    by: BandBy
    bands: tuple[Band, ...]

    @property
    def names(self) -> list[str]:
        return [band.name for band in self.bands]

    @property
    def max_rank(self) -> int:
        """The deepest rank a rank-based spec needs (the k to search for)."""
        if self.by != "rank":
            raise ValueError("max_rank is defined for rank bands only; quantile bands need an explicit k")
        return int(max(band.hi for band in self.bands))

    def to_json(self) -> dict:
        return {"by": self.by, "bands": {band.name: [band.lo, band.hi] for band in self.bands}}


def parse_bands(cfg: Mapping) -> BandSpec:
    """``{"by": "rank" | "quantile", "bands": {name: [lo, hi], ...}}`` -> ``BandSpec`` (bands hardest first)."""
    by = cfg.get("by")
    if by not in ("rank", "quantile"):
        raise ValueError(f"difficulty bands: 'by' must be 'rank' or 'quantile', got {by!r}")
    raw = cfg.get("bands")
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError("difficulty bands: 'bands' must be a non-empty mapping name -> [lo, hi]")
    bands = []
    for name, bounds in raw.items():
        if not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 2:
            raise ValueError(f"difficulty band {name!r}: expected [lo, hi], got {bounds!r}")
        lo, hi = bounds
        if by == "rank":
            if int(lo) != lo or int(hi) != hi or not 1 <= lo <= hi:
                raise ValueError(f"difficulty band {name!r}: ranks must be integers with 1 <= lo <= hi, got {bounds}")
            bands.append(Band(str(name), int(lo), int(hi)))
        else:
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"difficulty band {name!r}: quantiles must satisfy 0 <= lo < hi <= 1, got {bounds}")
            bands.append(Band(str(name), float(lo), float(hi)))
    bands.sort(key=lambda band: (band.lo, band.hi))  # hardest first, whatever order the mapping came in
    for prev, band in zip(bands, bands[1:]):
        overlap = band.lo <= prev.hi if by == "rank" else band.lo < prev.hi
        if overlap:
            raise ValueError(
                f"difficulty bands {prev.name!r} and {band.name!r} overlap: {[prev.lo, prev.hi]} and "
                f"{[band.lo, band.hi]}"
            )
    return BandSpec(by, tuple(bands))


def score_column(metric: str) -> str:
    return "similarity" if metric == "cosine" else "distance"


def band_table(neighbours: Neighbours, ids: Sequence[str] | np.ndarray, spec: BandSpec) -> pd.DataFrame:
    """One row per (anchor, neighbour) inside a band, in anchor order then rank order.

    Columns: anchor_id, band, neighbour_id, rank (1-based), and similarity (cosine) or distance (euclidean).
    """
    ids = np.asarray(ids, dtype=object)
    if neighbours.query_rows is None:
        raise ValueError("difficulty bands need a self-search (knn.knn), not a query-vs-database search")
    needed = max(int(neighbours.rows.max(initial=-1)), int(neighbours.query_rows.max(initial=-1))) + 1
    if ids.ndim != 1 or ids.size < needed:
        raise ValueError(f"ids: expected a 1-D array with an id for each of the {needed} items, got shape {ids.shape}")
    n_q, k = neighbours.rows.shape
    ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), (n_q, k))
    valid = neighbours.rows >= 0
    band_of = np.full((n_q, k), -1, dtype=np.int64)
    if spec.by == "rank":
        for b, band in enumerate(spec.bands):
            band_of[(ranks >= band.lo) & (ranks <= band.hi) & valid] = b
    else:
        p = _difficulty_quantile(neighbours.scores, valid, neighbours.metric)
        for b, band in enumerate(spec.bands):
            upper = (p < band.hi) | (band.hi == 1.0)
            band_of[(p >= band.lo) & upper & valid] = b
    keep = band_of >= 0  # row-major: anchor order, then rank
    anchor_rows = np.broadcast_to(neighbours.query_rows[:, None], (n_q, k))[keep]
    names = np.array(spec.names, dtype=object)
    table = pd.DataFrame(
        {
            "anchor_id": ids[anchor_rows],
            "band": names[band_of[keep]],
            "neighbour_id": ids[neighbours.rows[keep]],
            "rank": ranks[keep],
            score_column(neighbours.metric): neighbours.scores[keep],
        }
    )
    for column in ("anchor_id", "band", "neighbour_id"):
        table[column] = table[column].astype(str)
    counts = table["band"].value_counts()
    LOG.info(
        "difficulty bands (%s): %d anchors, %s",
        spec.by,
        n_q,
        ", ".join(f"{name} {int(counts.get(name, 0))} pairs" for name in spec.names),
    )
    return table


def _difficulty_quantile(scores: np.ndarray, valid: np.ndarray, metric: str) -> np.ndarray:
    """Fraction of all valid pairs strictly harder than each pair (0 = hardest); NaN where invalid."""
    hardness = scores if metric == "cosine" else -scores  # more similar / closer = harder
    values = np.sort(hardness[valid])
    out = np.full(scores.shape, np.nan)
    if values.size:
        harder = values.size - np.searchsorted(values, hardness[valid], side="right")
        out[valid] = harder / values.size
    return out


def difficulty_bands(
    embeddings: np.ndarray,
    ids: Sequence[str] | np.ndarray,
    spec: BandSpec,
    *,
    k: int | None = None,
    identity: Sequence | np.ndarray | None = None,
    metric: Metric = "cosine",
    block_size: int = 1024,
    db_block_size: int = 16384,
    engine: str = "cpu",
) -> pd.DataFrame:
    """Exact kNN of every item (same-identity items excluded) cut into bands; see ``band_table``. ``engine``
    proposes the kNN's candidates (``knn.ENGINES``); it never changes the result."""
    ids = np.asarray(ids, dtype=object)
    if ids.shape != (len(embeddings),):
        raise ValueError(f"ids: expected {len(embeddings)} ids (one per embedding row), got shape {ids.shape}")
    if len(set(ids.tolist())) != ids.size:
        raise ValueError("ids: item ids must be unique")
    if spec.by == "rank":
        if k is not None and k < spec.max_rank:
            raise ValueError(f"k={k} is smaller than the deepest band rank {spec.max_rank}")
        k = spec.max_rank if k is None else k
    elif k is None:
        raise ValueError("quantile bands need k (how many neighbours per anchor enter the quantiles)")
    result = knn(
        embeddings,
        k,
        metric=metric,
        identity=identity,
        block_size=block_size,
        db_block_size=db_block_size,
        engine=engine,
    )
    short = int((result.counts < k).sum())
    if short:
        LOG.warning("%d of %d anchors have fewer than k=%d admissible neighbours", short, len(ids), k)
    return band_table(result, ids, spec)


def write_difficulty(
    path: str | os.PathLike,
    table: pd.DataFrame,
    spec: BandSpec,
    metric: str,
    k: int,
    extra: Mapping[str, object] | None = None,
) -> None:
    """Write the band table to parquet atomically; the spec, metric and k go into the file's metadata."""
    expected = [*COLUMNS, score_column(metric)]
    if list(table.columns) != expected:
        raise ValueError(f"{path}: difficulty table columns {list(table.columns)} != {expected}")
    meta = {"bands": spec.to_json(), "metric": metric, "k": int(k), **dict(extra or {})}
    write_parquet(path, table, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})


def read_difficulty_metadata(path: str | os.PathLike) -> dict:
    """The metadata ``write_difficulty`` stored (bands, metric, k, extras)."""
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        raise ValueError(f"{path}: not a difficulty parquet (no {METADATA_KEY} metadata)")
    return json.loads(raw)
