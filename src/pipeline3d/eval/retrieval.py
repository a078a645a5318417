"""Retrieval metrics: CMC Rank@K / Recall@K, average precision, and the query/gallery protocol over qg splits.

Everything is exact and deterministic: the gallery is ranked by a stable sort on -similarity, so ties are broken by
gallery order (for ``qg_rank_map``: by shape id). A query with no relevant item in the gallery has no defined rank
or AP; it is left out of every average and counted in ``n_query_without_relevant``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

MetricValue = float | int


def _check_pair(sim: np.ndarray, relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sim = np.asarray(sim)
    relevant = np.asarray(relevant)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be a (queries, gallery) matrix, got shape {sim.shape}")
    if relevant.shape != sim.shape:
        raise ValueError(f"shape mismatch: similarity {sim.shape} vs relevance {relevant.shape}")
    if relevant.dtype != np.bool_:
        raise ValueError(f"relevance must be a boolean matrix, got dtype {relevant.dtype}")
    if not np.isfinite(sim).all():
        raise ValueError("similarity contains NaN or infinite values")
    return sim, relevant


def _check_ks(ks: Iterable[int]) -> list[int]:
    out = [int(k) for k in ks]
    if not out or any(k < 1 for k in out):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {list(ks)}")
    return out


def sorted_relevance(sim: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(Q, G) relevance reordered by decreasing similarity per query; ties keep gallery order."""
    sim, relevant = _check_pair(sim, relevant)
    order = np.argsort(-sim, axis=1, kind="stable")
    return np.take_along_axis(relevant, order, axis=1)


def ranks(sim: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of the first relevant gallery item per query -> int64 (Q,); 0 where the query has none."""
    rel = sorted_relevance(sim, relevant)
    has = rel.any(axis=1)
    first = rel.argmax(axis=1) + 1
    return np.where(has, first, 0).astype(np.int64)


def recall_at_k(sim: np.ndarray, relevant: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """CMC Rank@K: the fraction of queries with at least one relevant item in their top k, for each k in ``ks``.

    Queries without any relevant gallery item are left out; NaN for every k when no query has one.
    """
    ks = _check_ks(ks)
    r = ranks(sim, relevant)
    r = r[r > 0]
    if r.size == 0:
        return {k: float("nan") for k in ks}
    return {k: float((r <= k).mean()) for k in ks}


def average_precision(sim: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Average precision per query -> float64 (Q,); NaN where the query has no relevant gallery item.

    AP = mean over the relevant items of the precision at their rank (the non-interpolated AP, which equals
    ``sklearn.metrics.average_precision_score`` when there are no ties in similarity).
    """
    rel = sorted_relevance(sim, relevant)
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    n_rel = rel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * rel).sum(axis=1) / n_rel
    return np.where(n_rel > 0, ap, np.nan).astype(np.float64)


def _unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a (N, D) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if (norm == 0).any():
        raise ValueError(f"{what}: {int((norm == 0).sum())} zero vector(s) have no direction (cosine undefined)")
    return x / norm


def rank_map(
    query_vecs: np.ndarray,
    query_labels: np.ndarray,
    gallery_vecs: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, MetricValue]:
    """Cosine retrieval of queries against a gallery; a gallery item is relevant when it has the query's label.

    Returns {"rank@K" for K in ks (CMC), "mAP", "n_query", "n_gallery", "n_query_without_relevant"}. Rates are
    averaged over the queries that have at least one relevant item (NaN when none has).
    """
    ks = _check_ks(ks)
    q = _unit_rows(query_vecs, "query vectors")
    g = _unit_rows(gallery_vecs, "gallery vectors")
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"shape mismatch: query vectors have dim {q.shape[1]}, gallery vectors {g.shape[1]}")
    if ql.shape != (q.shape[0],):
        raise ValueError(f"shape mismatch: {q.shape[0]} query vectors but query labels of shape {ql.shape}")
    if gl.shape != (g.shape[0],):
        raise ValueError(f"shape mismatch: {g.shape[0]} gallery vectors but gallery labels of shape {gl.shape}")
    if g.shape[0] == 0:
        raise ValueError("the gallery is empty")
    sim = q @ g.T
    relevant = ql[:, None] == gl[None, :]
    ap = average_precision(sim, relevant)
    recall = recall_at_k(sim, relevant, ks)
    scored = ~np.isnan(ap)
    out: dict[str, MetricValue] = {f"rank@{k}": recall[k] for k in ks}
    out["mAP"] = float(ap[scored].mean()) if scored.any() else float("nan")
    out["n_query"] = int(q.shape[0])
    out["n_gallery"] = int(g.shape[0])
    out["n_query_without_relevant"] = int((~scored).sum())
    return out


def _vector_lookup(
    vectors_by_id: Mapping[str, np.ndarray] | tuple[Sequence[str], np.ndarray],
) -> tuple[dict[str, int], np.ndarray]:
    """id -> row and the (N, D) matrix, from a dict of vectors or an (ids, vectors) pair."""
    if isinstance(vectors_by_id, Mapping):
        ids = list(vectors_by_id)
        if not ids:
            raise ValueError("no vectors given")
        matrix = np.stack([np.asarray(vectors_by_id[i], dtype=np.float64).ravel() for i in ids])
    else:
        ids_seq, matrix = vectors_by_id
        ids = [str(i) for i in ids_seq]
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != len(ids):
            raise ValueError(f"shape mismatch: {len(ids)} ids but vectors of shape {matrix.shape}")
    row = {sid: r for r, sid in enumerate(ids)}
    if len(row) != len(ids):
        raise ValueError("duplicate ids among the vectors")
    return row, matrix


def _mean_std(values: list[float]) -> tuple[float, float]:
    # sample std (ddof=1, as the report's tables; 0 for a single split) over the splits; NaN splits (no scorable
    # query) are left out
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    return float(np.mean(finite)), float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


def qg_rank_map(
    vectors_by_id: Mapping[str, np.ndarray] | tuple[Sequence[str], np.ndarray],
    labels_by_id: Mapping[str, int] | None,
    qg: pd.DataFrame,
    ks: Sequence[int] = (1, 5, 10),
) -> dict:
    """``rank_map`` on every query/gallery split of a qg table (split_id, shape_id, role, label), then mean and std.

    Args:
        vectors_by_id: {shape_id: vector} or (ids, (N, D) vectors).
        labels_by_id: {shape_id: label}; None -> the qg table's own "label" column.
        qg: the qg split table (results/splits/<ds>/qg.parquet).
        ks: the CMC cut-offs.

    Within a split the gallery is ordered by shape id, so ties in similarity are broken by id. A shape that is
    both query and gallery in one split, or an id without a vector or label, is an error.

    Returns {"rank@K": mean, "mAP": mean, "std": {metric: sample std (ddof=1) over splits}, "per_split": [rank_map
    result + "split_id" per split], "n_splits", "n_query_without_relevant" (summed over splits)}. Splits
    where no query has a relevant item are left out of the mean/std.
    """
    ks = _check_ks(ks)
    needed = {"split_id", "shape_id", "role"} | ({"label"} if labels_by_id is None else set())
    missing = needed - set(qg.columns)
    if missing:
        raise ValueError(f"qg table lacks column(s) {sorted(missing)}; has {list(qg.columns)}")
    bad_roles = sorted(set(qg["role"]) - {"query", "gallery"})
    if bad_roles:
        raise ValueError(f"qg table has unknown role(s) {bad_roles}; expected 'query' or 'gallery'")
    if len(qg) == 0:
        raise ValueError("qg table is empty")
    row, matrix = _vector_lookup(vectors_by_id)
    ids = qg["shape_id"].astype(str)
    unknown = sorted(set(ids) - set(row))
    if unknown:
        raise ValueError(f"{len(unknown)} qg shape id(s) have no vector, e.g. {unknown[:5]}")
    if labels_by_id is None:
        labels = qg["label"].to_numpy()
    else:
        unlabeled = sorted(set(ids) - set(labels_by_id))
        if unlabeled:
            raise ValueError(f"{len(unlabeled)} qg shape id(s) have no label, e.g. {unlabeled[:5]}")
        labels = np.array([labels_by_id[s] for s in ids])
    table = pd.DataFrame(
        {
            "split_id": qg["split_id"].to_numpy(),
            "shape_id": ids.to_numpy(),
            "role": qg["role"].to_numpy(),
            "label": labels,
        }
    )

    metrics = [f"rank@{k}" for k in ks] + ["mAP"]
    per_split: list[dict] = []
    for split_id, part in table.groupby("split_id", sort=True):
        part = part.sort_values("shape_id", kind="stable")
        query = part[part["role"] == "query"]
        gallery = part[part["role"] == "gallery"]
        both = sorted(set(query["shape_id"]) & set(gallery["shape_id"]))
        if both:
            raise ValueError(f"qg split {split_id}: {len(both)} shape(s) are both query and gallery, e.g. {both[:5]}")
        if query.empty or gallery.empty:
            raise ValueError(
                f"qg split {split_id} has {len(query)} queries and {len(gallery)} gallery items; both must be non-empty"
            )
        result = rank_map(
            matrix[[row[s] for s in query["shape_id"]]],
            query["label"].to_numpy(),
            matrix[[row[s] for s in gallery["shape_id"]]],
            gallery["label"].to_numpy(),
            ks,
        )
        per_split.append({"split_id": int(split_id), **result})

    out: dict = {}
    std: dict[str, float] = {}
    for m in metrics:
        out[m], std[m] = _mean_std([float(s[m]) for s in per_split])
    out["std"] = std
    out["per_split"] = per_split
    out["n_splits"] = len(per_split)
    out["n_query_without_relevant"] = int(sum(s["n_query_without_relevant"] for s in per_split))
    return out
