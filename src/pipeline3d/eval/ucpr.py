"""UCPR, unpaired cross-primitive retrieval: the pieces of the protocol that are not embedding.

Every eval shape is embedded twice, once as a query (one primitive, token draws keyed by ``query_seed``) and once as
a gallery item (another primitive, ``gallery_seed``); query i's match is gallery i. Fixes over the reference
(nepa3d-spec §8.1 / §10 item 5):

* Subset: ``max_files`` takes a class-stratified subset (``stratified_subset``), not the first N sorted paths
  (which was a class-biased subset of ShapeNet).
* Seeds: the query and gallery seeds must differ; with one seed both sides draw the same query coordinates and the
  retrieval is trivial (``check_seeds``).
* Ranks are tie-aware (``instance_metrics``): the rank of the match is its EXPECTED rank when tied gallery items are
  put in a uniformly random order, rank = 1 + #(strictly higher) + #(tied others)/2. R@K and MRR are likewise the
  expectations under that random tie order (exact, no noise added), so a collapsed encoder (every score tied)
  scores exactly the chance level instead of the reference's optimistic R@1 = 1.
* The mean of 1/rank is called MRR (the reference called it mAP). Category-level retrieval (every same-class
  gallery item relevant) is reported separately as category_mAP and category_R@1.
* Ablations (``ablate``) zero the slots they claim: point_xyz = XYZ of POINT and Q_POINT tokens, point_dist =
  DIST (slot 10) of POINT and A_POINT tokens (the reference zeroed slot 9 = ray t, so its ablation was a no-op).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..rng import rng_for
from ..tokens.layout import A_POINT, DIST, FEAT_DIM, POINT, Q_POINT, XYZ
from .retrieval import average_precision

ABLATIONS = ("none", "point_xyz", "point_dist")
# ablation -> (feature slots zeroed, token types they are zeroed on)
ABLATION_TARGETS: dict[str, tuple[slice, tuple[int, ...]]] = {
    "point_xyz": (XYZ, (POINT, Q_POINT)),
    "point_dist": (slice(DIST, DIST + 1), (POINT, A_POINT)),
}
KS = (1, 5, 10)
METRIC_KEYS = ("R@1", "R@5", "R@10", "MRR", "mean_rank", "median_rank", "category_mAP", "category_R@1")
SUBSET_STAGE = "ucpr"
CHUNK = 512  # query rows scored at once: bounds the (chunk, N) similarity block


# -- protocol checks ---------------------------------------------------------------------------------------------


def check_seeds(query_seed: int, gallery_seed: int) -> None:
    if int(query_seed) == int(gallery_seed):
        raise ValueError(
            f"eval.ucpr.query_seed and eval.ucpr.gallery_seed are both {int(query_seed)}: with one seed "
            "the query and gallery draws share their query coordinates and retrieval is trivial; "
            "set different seeds"
        )


def check_ablations(names: Iterable[str]) -> list[str]:
    names = [str(n) for n in names]
    if not names:
        raise ValueError(f"eval.ucpr.ablations is empty; use some of {ABLATIONS}")
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"eval.ucpr.ablations: unknown {unknown}; expected some of {ABLATIONS}")
    if len(set(names)) != len(names):
        raise ValueError(f"eval.ucpr.ablations lists an ablation twice: {names}")
    return names


# -- ablations ---------------------------------------------------------------------------------------------------


def ablation_mask(type_id: torch.Tensor, name: str) -> torch.Tensor:
    """Bool (B, T, FEAT_DIM): the feature entries ``name`` zeroes (all False for "none")."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; expected one of {ABLATIONS}")
    mask = torch.zeros((*type_id.shape, FEAT_DIM), dtype=torch.bool)
    if name == "none":
        return mask
    slots, types = ABLATION_TARGETS[name]
    on_type = torch.isin(type_id, torch.tensor(types, dtype=type_id.dtype))
    mask[..., slots] = on_type[..., None]
    return mask


def ablate(batch: Mapping[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """A collated token batch with ``name``'s slots zeroed on its token types; the input batch is not modified.

    Applies to every token set of the batch (``feat`` and, with two views, ``v2_feat``).
    """
    out = dict(batch)
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; expected one of {ABLATIONS}")
    if name == "none":
        return out
    for prefix in ("", "v2_"):
        if f"{prefix}feat" in batch:
            feat = batch[f"{prefix}feat"]
            out[f"{prefix}feat"] = feat.masked_fill(ablation_mask(batch[f"{prefix}type_id"], name), 0.0)
    return out


def n_zeroed(batch: Mapping[str, torch.Tensor], name: str) -> int:
    """How many non-zero feature values ``ablate(batch, name)`` sets to zero (0 = the ablation is a no-op here)."""
    return int((ablation_mask(batch["type_id"], name) & (batch["feat"] != 0)).sum())


# -- eval subset -------------------------------------------------------------------------------------------------


def allocate(class_sizes: Mapping[int, int], total: int) -> dict[int, int]:
    """Per-class quotas summing to ``min(total, N)``: proportional, largest remainder, each class >= 1 if possible.

    Quota_c = total * n_c / N, floored; the leftover units go to the largest fractional parts (exact integer
    arithmetic; ties to the larger class, then the smaller label). When ``total`` >= the number of classes, a class
    left at 0 takes one unit from the class with the largest quota.
    """
    sizes = {int(c): int(n) for c, n in class_sizes.items() if int(n) > 0}
    n_all = sum(sizes.values())
    if total < 1:
        raise ValueError(f"eval.ucpr.max_files must be >= 1 (or null for all), got {total}")
    if total >= n_all:
        return dict(sizes)
    quota = {c: total * n // n_all for c, n in sizes.items()}
    order = sorted(sizes, key=lambda c: (-(total * sizes[c] % n_all), -sizes[c], c))
    for c in order[: total - sum(quota.values())]:
        quota[c] += 1
    if total >= len(sizes):
        for c in sorted(c for c in sizes if quota[c] == 0):
            donor = max(sorted(quota), key=lambda d: quota[d])
            quota[donor] -= 1
            quota[c] = 1
    return quota


def subset_key(seed: int, shape_id: str) -> int:
    """The order in which a class gives its shapes to the subset (a seeded hash of the shape id)."""
    return int(rng_for(seed, SUBSET_STAGE, shape_id).integers(0, 2**63 - 1))


def stratified_subset(labels: Mapping[str, int], max_files: int | None, seed: int) -> list[str]:
    """Shape ids (sorted) of a class-stratified subset of ``labels`` (shape id -> label); None = all of them.

    Within a class the shapes with the lowest ``subset_key`` are taken, so the subset depends on the ids, labels
    and seed only, never on the input order.
    """
    ids = sorted(labels)
    if max_files is None or max_files >= len(ids):
        return ids
    by_class: dict[int, list[str]] = {}
    for sid in ids:
        by_class.setdefault(int(labels[sid]), []).append(sid)
    quota = allocate({c: len(v) for c, v in by_class.items()}, int(max_files))
    chosen: list[str] = []
    for c, members in by_class.items():
        chosen += sorted(members, key=lambda s: (subset_key(seed, s), s))[: quota[c]]
    return sorted(chosen)


# -- metrics -----------------------------------------------------------------------------------------------------


def _harmonic(n: int) -> np.ndarray:
    """H[k] = 1 + 1/2 + ... + 1/k for k = 0..n (H[0] = 0)."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def _checked(
    query: np.ndarray, gallery: np.ndarray, labels: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    lab = np.asarray(labels)
    if q.ndim != 2 or q.shape != g.shape:
        raise ValueError(f"query vectors {q.shape} and gallery vectors {g.shape} must be matching (N, D) matrices")
    if len(q) == 0:
        raise ValueError("no shapes to retrieve")
    if lab.shape != (len(q),):
        raise ValueError(f"{len(q)} shapes but labels of shape {lab.shape}")
    if not (np.isfinite(q).all() and np.isfinite(g).all()):
        raise ValueError("query or gallery vectors contain NaN or infinite values")
    return q, g, lab


def tie_counts(sim: np.ndarray, true_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``sim``: (#gallery scores strictly above the true one, #other gallery scores equal to it)."""
    rows = np.arange(len(sim))
    true = sim[rows, true_col][:, None]
    greater = (sim > true).sum(axis=1)
    ties = (sim == true).sum(axis=1) - 1
    return greater.astype(np.int64), ties.astype(np.int64)


def expected_rank_stats(
    greater: np.ndarray, ties: np.ndarray, ks: Sequence[int], n_gallery: int
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    """Per query, under a uniformly random order of tied items: (expected rank, expected 1/rank, P(rank <= k)).

    The match is equally likely at each of the positions greater+1 .. greater+ties+1.
    """
    h = _harmonic(n_gallery)
    slots = ties + 1
    rank = 1.0 + greater + ties / 2.0
    rr = (h[greater + slots] - h[greater]) / slots
    hit = {k: np.clip(k - greater, 0, slots) / slots for k in ks}
    return rank, rr, hit


def instance_metrics(
    query: np.ndarray, gallery: np.ndarray, labels: Sequence[int], ks: Sequence[int] = KS, chunk: int = CHUNK
) -> dict[str, float]:
    """UCPR metrics of cosine retrieval where query i's match is gallery i (see the module docstring).

    Returns R@k (k in ``ks``), MRR, mean_rank, median_rank (tie-aware), category_mAP (all gallery items of the
    query's class relevant; ``retrieval.average_precision``, ties by gallery order) and category_R@1 (expected
    fraction of same-class items among the top-scored ones, tie-aware).
    """
    q, g, lab = _checked(query, gallery, labels)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
    g = g / np.linalg.norm(g, axis=1, keepdims=True).clip(1e-12)
    n = len(q)
    ranks, rrs, aps, cat1 = [], [], [], []
    hits: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        sim = q[rows] @ g.T
        greater, ties = tie_counts(sim, rows)
        rank, rr, hit = expected_rank_stats(greater, ties, ks, n)
        ranks.append(rank)
        rrs.append(rr)
        for k in ks:
            hits[k].append(hit[k])
        relevant = lab[rows][:, None] == lab[None, :]
        aps.append(average_precision(sim, relevant))
        top = sim == sim.max(axis=1, keepdims=True)
        cat1.append((top & relevant).sum(axis=1) / top.sum(axis=1))
    rank = np.concatenate(ranks)
    out = {f"R@{k}": float(np.concatenate(hits[k]).mean()) for k in ks}
    out |= {
        "MRR": float(np.concatenate(rrs).mean()),
        "mean_rank": float(rank.mean()),
        "median_rank": float(np.median(rank)),
        "category_mAP": float(np.concatenate(aps).mean()),
        "category_R@1": float(np.concatenate(cat1).mean()),
    }
    return out


def chance_levels(labels: Sequence[int], ks: Sequence[int] = KS) -> dict[str, float]:
    """The same metrics for a gallery ranked in uniformly random order (exact expectations).

    Instance: R@k = min(k, N)/N, MRR = H_N/N, mean and median rank = (N+1)/2. Category, for a query whose class
    has R gallery items: R@1 = R/N, expected AP = (H_N + (R-1)/(N-1) (N - H_N)) / N, averaged over queries.
    """
    lab = np.asarray(labels)
    n = len(lab)
    if n == 0:
        raise ValueError("no shapes to retrieve")
    h_n = float(_harmonic(n)[-1])
    _, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    r = counts[inverse].astype(np.float64)
    ap = np.ones(n) if n == 1 else (h_n + (r - 1) / (n - 1) * (n - h_n)) / n
    out = {f"R@{k}": min(k, n) / n for k in ks}
    out |= {
        "MRR": h_n / n,
        "mean_rank": (n + 1) / 2,
        "median_rank": (n + 1) / 2,
        "category_mAP": float(ap.mean()),
        "category_R@1": float((r / n).mean()),
    }
    return out


# -- eval set ----------------------------------------------------------------------------------------------------


def eval_set(unpaired_path: str | None, ttv_path: str) -> tuple[dict[str, int], str]:
    """(shape id -> label, where from) of the UCPR eval shapes.

    The unpaired split's "eval" shapes; a dataset without an unpaired split (an empty table: point-cloud datasets
    have none) uses its ttv "test" shapes. An unpaired table with rows but no "eval" shape is an error.
    """
    from ..data.selection import ttv_labels
    from ..io.tables import read_parquet

    if unpaired_path:
        try:
            table = read_parquet(unpaired_path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"input 'unpaired': {unpaired_path}: cannot read the unpaired split: {exc}") from exc
        missing = {"shape_id", "label", "split"} - set(table.columns)
        if missing:
            raise ValueError(f"input 'unpaired': {unpaired_path} lacks columns {sorted(missing)}")
        if len(table):
            rows = table[table["split"] == "eval"]
            if rows.empty:
                raise ValueError(f"input 'unpaired': {unpaired_path} has no 'eval' shapes")
            return dict(zip(rows["shape_id"].astype(str), rows["label"].astype(int))), "unpaired:eval"
    labels = ttv_labels(ttv_path, "test")
    if not labels:
        raise ValueError(f"input 'ttv': {ttv_path} has no 'test' shapes to evaluate on")
    return labels, "ttv:test"
