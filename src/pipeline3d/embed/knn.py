"""Exact k-nearest neighbours over embeddings (cosine or euclidean), never N x N in memory.

How: queries and database are cut into tiles; each tile is one float32 matrix product (torch / MKL) followed by a
top-C selection (C = k + a margin) merged into a running top-C per query. The float32 candidates are then re-scored
in float64 and ranked by (score, database row), so ties are broken by the lower row. A query's result is certified
exact when the worst float32 candidate, plus a rigorous bound on the float32 rounding error, is still strictly
worse than the float64 k-th score: then no item outside the candidates can reach the top k. Rows that cannot be
certified (near-duplicates crowding the margin) are rescanned fully in float64. The result is therefore the exact
top-k of the float64 scores, identical for every tile size and thread count. Memory: one tile of scores plus the
candidates (N x C), never N x N. A self-search over all items computes each symmetric tile once and uses it for both
its rows and its columns (half the products).

Exclusions: an ``identity`` per item; an item never counts as a neighbour of a query with the same identity (the
query itself included, by default every item is its own identity).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np
import torch

from ..log import Progress

LOG = logging.getLogger(__name__)

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[str, ...] = ("cosine", "euclidean")
_U32 = 2.0**-24  # unit roundoff of float32
_U64 = 2.0**-53
_REFINE_ROWS = 32  # queries re-scored together in float64 (memory: rows x C x D x 8 bytes)


@dataclass(frozen=True)
class Neighbours:
    """The k nearest database rows of each query, best first.

    ``rows`` (Q, k) int64, -1 where a query has fewer than k admissible items; ``scores`` (Q, k) float64: cosine
    similarity (descending) or euclidean distance (ascending), NaN where ``rows`` is -1. ``query_rows`` are the
    database rows of the queries for a self-search (``knn``), None for ``search`` with separate query vectors.
    ``n_rescanned``: queries whose float32 candidates could not be certified and were rescanned in float64.
    """

    rows: np.ndarray
    scores: np.ndarray
    metric: str
    query_rows: np.ndarray | None
    n_rescanned: int

    @property
    def k(self) -> int:
        return int(self.rows.shape[1])

    @property
    def counts(self) -> np.ndarray:
        """Number of neighbours found per query (k unless too few admissible items exist)."""
        return (self.rows >= 0).sum(axis=1)


def knn(x: np.ndarray, k: int, *, metric: Metric = "cosine", identity: Sequence | np.ndarray | None = None,
        rows: np.ndarray | Sequence[int] | None = None, block_size: int = 1024, db_block_size: int = 16384,
        margin: int | None = None) -> Neighbours:
    """The k nearest neighbours of ``x[rows]`` (default: every row) among all rows of ``x``.

    An item is never its own neighbour, nor a neighbour of any item with an equal ``identity`` (e.g. a shape id
    shared by several views). ``block_size`` queries x ``db_block_size`` database rows bound the working memory.
    """
    _check_search_args(k, block_size, db_block_size, margin)
    x = _check_matrix(x, "embeddings")
    n = x.shape[0]
    codes = np.arange(n, dtype=np.int64) if identity is None else _identity_codes(identity, n)
    query_rows = np.arange(n, dtype=np.int64) if rows is None else _check_rows(rows, n)
    index = _Database(x, metric, codes)
    queries = _Queries(x, metric, query_rows, norms=index.norms[query_rows])
    result = index.search(queries, codes[query_rows], k, block_size, db_block_size, margin, symmetric=rows is None)
    return Neighbours(result.rows, result.scores, metric, query_rows, result.n_rescanned)


def search(queries: np.ndarray, database: np.ndarray, k: int, *, metric: Metric = "cosine",
           query_identity: Sequence | np.ndarray | None = None,
           database_identity: Sequence | np.ndarray | None = None, block_size: int = 1024,
           db_block_size: int = 16384, margin: int | None = None) -> Neighbours:
    """The k nearest ``database`` rows of each row of ``queries`` (e.g. text embeddings against shapes).

    With identities (both or neither), a database row whose identity equals the query's is never returned.
    """
    _check_search_args(k, block_size, db_block_size, margin)
    queries = _check_matrix(queries, "queries")
    database = _check_matrix(database, "database")
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]} but the database has {database.shape[1]}")
    if (query_identity is None) != (database_identity is None):
        raise ValueError("give both query_identity and database_identity, or neither")
    nq, nd = queries.shape[0], database.shape[0]
    if query_identity is None:
        q_codes, d_codes = np.full(nq, -1, dtype=np.int64), np.full(nd, -2, dtype=np.int64)
    else:
        both = _identity_codes(np.concatenate([_as_identity(query_identity, nq, "query_identity"),
                                               _as_identity(database_identity, nd, "database_identity")]), nq + nd)
        q_codes, d_codes = both[:nq], both[nq:]
    index = _Database(database, metric, d_codes)
    result = index.search(_Queries(queries, metric, np.arange(nq, dtype=np.int64)), q_codes, k, block_size,
                          db_block_size, margin)
    return Neighbours(result.rows, result.scores, metric, None, result.n_rescanned)


# -- input checks -----------------------------------------------------------------------------------------------


def _check_matrix(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what}: expected a non-empty 2-D array (items x dims), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: expected a floating-point array, got {x.dtype}")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"{what}: row {int(np.flatnonzero(~finite)[0])} has a NaN or infinite value")
    if np.abs(x).max() > 1e18:  # squares must stay inside float32 range
        raise ValueError(f"{what}: values up to {np.abs(x).max():.3g} exceed what float32 products can hold")
    return x


def _check_search_args(k, block_size: int, db_block_size: int, margin: int | None) -> None:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if block_size < 1 or db_block_size < 1:
        raise ValueError(f"block sizes must be positive, got block_size={block_size}, db_block_size={db_block_size}")
    if margin is not None and margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")


def _check_rows(rows, n: int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 1 or not (rows.size == 0 or np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"rows: expected a 1-D integer array, got {rows.dtype} of shape {rows.shape}")
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows: indices must lie in [0, {n}), got range [{rows.min()}, {rows.max()}]")
    return rows


def _as_identity(identity, n: int, what: str = "identity") -> np.ndarray:
    values = np.asarray(identity)
    if values.shape != (n,):
        raise ValueError(f"{what}: expected {n} values (one per item), got shape {values.shape}")
    return values


def _identity_codes(identity, n: int) -> np.ndarray:
    """Dense int64 codes with equal codes for equal identities (strings, ints, ...)."""
    _, codes = np.unique(_as_identity(identity, n), return_inverse=True)
    return codes.astype(np.int64).reshape(n)


# -- the search -------------------------------------------------------------------------------------------------


@dataclass
class _Result:
    rows: np.ndarray
    scores: np.ndarray
    n_rescanned: int


class _Queries:
    """Query vectors: float32 working copy (unit length for cosine) and float64 norms."""

    def __init__(self, x: np.ndarray, metric: str, rows: np.ndarray, norms: np.ndarray | None = None):
        self.x, self.rows = x, rows
        self.norms = _row_norms(x, rows) if norms is None else norms
        if metric == "cosine":
            _refuse_zero(self.norms, rows, "query")

    def block32(self, lo: int, hi: int, metric: str) -> torch.Tensor:
        rows = self.rows[lo:hi]
        v = self.x[rows].astype(np.float64)
        if metric == "cosine":
            v /= self.norms[lo:hi, None]
        return torch.from_numpy(v.astype(np.float32))

    def block64(self, lo: int, hi: int) -> np.ndarray:
        return self.x[self.rows[lo:hi]].astype(np.float64)


class _Database:
    """Database vectors prepared once: a float32 matrix for the products and float64 norms for the re-rank."""

    def __init__(self, x: np.ndarray, metric: str, codes: np.ndarray):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.x, self.metric, self.codes = x, metric, codes
        n = x.shape[0]
        self.norms = _row_norms(x, np.arange(n))
        if metric == "cosine":  # unit rows, built in slices so no float64 copy of the whole matrix exists
            _refuse_zero(self.norms, np.arange(n), "database")
            self.x32 = np.empty(x.shape, dtype=np.float32)
            for lo in range(0, n, 8192):
                self.x32[lo:lo + 8192] = x[lo:lo + 8192].astype(np.float64) / self.norms[lo:lo + 8192, None]
        else:
            self.x32 = np.ascontiguousarray(x, dtype=np.float32)  # no copy for C-ordered float32 input
        self.t32 = torch.from_numpy(self.x32)
        self.sq32 = torch.from_numpy((self.norms**2).astype(np.float32))
        self.t_codes = torch.from_numpy(codes)
        self.code_order = np.argsort(codes, kind="stable")  # rows grouped by identity, for sparse masking
        self.sorted_codes = codes[self.code_order]
        self.max_norm = float(self.norms.max())

    def search(self, queries: _Queries, q_codes: np.ndarray, k: int, block_size: int, db_block_size: int,
               margin: int | None, symmetric: bool = False) -> _Result:
        """Exact top-k of every query. ``symmetric``: the queries are all database rows in order (self-search)."""
        k = int(k)
        n_db, dim = self.x.shape
        n_cand = min(k + (max(8, k // 4) if margin is None else int(margin)), n_db)
        nq = queries.rows.shape[0]
        out_rows = np.full((nq, k), -1, dtype=np.int64)
        out_scores = np.full((nq, k), np.nan, dtype=np.float64)
        n_rescanned = 0
        progress = Progress(LOG, nq, "knn queries", every=max(nq, 1), seconds=60.0)
        with _highest_float32_precision(), torch.no_grad():
            if symmetric:
                blocks = self._candidates_symmetric(n_cand, block_size, db_block_size)
            else:
                blocks = ((lo, min(lo + block_size, nq),
                           *self._candidates(queries.block32(lo, min(lo + block_size, nq), self.metric),
                                             q_codes[lo:lo + block_size], n_cand, db_block_size))
                          for lo in range(0, nq, block_size))
            for lo, hi, cand_s32, cand_rows in blocks:
                for r0 in range(lo, hi, _REFINE_ROWS):
                    r1 = min(r0 + _REFINE_ROWS, hi)
                    rescan = self._refine(queries, q_codes, r0, r1, cand_s32[r0 - lo:r1 - lo],
                                          cand_rows[r0 - lo:r1 - lo], k, dim, out_rows, out_scores)
                    for i in rescan:
                        self._rescan_row(queries, q_codes, i, k, db_block_size, out_rows, out_scores)
                    n_rescanned += len(rescan)
                progress.step(hi - lo)
        if self.metric == "euclidean":
            np.sqrt(out_scores, out=out_scores)
        LOG.info("knn (%s): %d queries x %d items, dim %d, k=%d, %d candidates per query; %d queries rescanned in "
                 "float64", self.metric, nq, n_db, dim, k, n_cand, n_rescanned)
        return _Result(out_rows, out_scores, n_rescanned)

    def _candidates(self, q32: torch.Tensor, q_codes: np.ndarray, n_cand: int,
                    db_block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Running float32 top-``n_cand`` per query over database tiles (-inf marks excluded items)."""
        excluded = self._excluded_pairs(q_codes)
        best_s, best_i = _empty_candidates(q32.shape[0], n_cand)
        n_db = self.x32.shape[0]
        for d0 in range(0, n_db, db_block_size):
            d1 = min(d0 + db_block_size, n_db)
            s = q32 @ self.t32[d0:d1].T
            if self.metric == "euclidean":  # ranks like -|q - y|^2 up to the per-query constant |q|^2
                s.mul_(2.0).sub_(self.sq32[d0:d1])
            self._mask(s, excluded, q_codes, d0, d1)
            _fold(best_s, best_i, 0, q32.shape[0], s, d0)
        return best_s.numpy().astype(np.float64), best_i.numpy()

    def _candidates_symmetric(self, n_cand: int, block: int,
                              db_block: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """Self-search: the same float32 top-``n_cand`` candidates as ``_candidates`` at half the products.

        The score matrix is symmetric, so row block [a0, a1) is multiplied only with the items from a0 on. A tile
        feeds its rows' running candidates and, transposed, those of its columns beyond a1 (columns inside the block
        see these rows in their own row pass). Rows before a0 reached block a0 earlier as columns, so the block is
        final after its pass and is yielded. Held: the running candidates (N x n_cand) and one tile of scores.
        """
        n = self.x32.shape[0]
        best_s, best_i = _empty_candidates(n, n_cand)
        for a0 in range(0, n, block):
            a1 = min(a0 + block, n)
            excluded = self._excluded_pairs(self.codes[a0:a1])
            for b0 in range(a0, n, db_block):
                b1 = min(b0 + db_block, n)
                g = self.t32[a0:a1] @ self.t32[b0:b1].T
                self._mask(g, excluded, self.codes[a0:a1], b0, b1)
                rows_view = g if self.metric == "cosine" else (2.0 * g).sub_(self.sq32[b0:b1])
                _fold(best_s, best_i, a0, a1, rows_view, b0)
                c0 = max(b0, a1)
                if c0 < b1:  # the same products seen from the columns' side
                    cols_view = g[:, c0 - b0:].T.contiguous()
                    if self.metric == "euclidean":
                        cols_view.mul_(2.0).sub_(self.sq32[a0:a1])
                    _fold(best_s, best_i, c0, b1, cols_view, a0)
            yield a0, a1, best_s[a0:a1].numpy().astype(np.float64), best_i[a0:a1].numpy().copy()

    def _mask(self, s: torch.Tensor, excluded: tuple[np.ndarray, np.ndarray] | None, q_codes: np.ndarray, d0: int,
              d1: int) -> None:
        """Set same-identity entries of a (queries x database rows d0..d1) tile to -inf."""
        if excluded is None:
            qc = torch.from_numpy(np.ascontiguousarray(q_codes))[:, None]
            s.masked_fill_(qc == self.t_codes[d0:d1][None, :], float("-inf"))
        else:
            q_pos, rows = excluded
            inside = (rows >= d0) & (rows < d1)
            s[torch.from_numpy(q_pos[inside]), torch.from_numpy(rows[inside] - d0)] = float("-inf")

    def _excluded_pairs(self, q_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(query position, database row) of every same-identity pair, or None when identity groups are so large
        that comparing codes over the whole tile is cheaper than scattering the pairs."""
        lo = np.searchsorted(self.sorted_codes, q_codes, side="left")
        counts = np.searchsorted(self.sorted_codes, q_codes, side="right") - lo
        total = int(counts.sum())
        if total > 64 * q_codes.shape[0]:
            return None
        q_pos = np.repeat(np.arange(q_codes.shape[0], dtype=np.int64), counts)
        offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return q_pos, self.code_order[np.repeat(lo, counts) + offsets]

    def _tolerance(self, q_norms: np.ndarray, dim: int) -> np.ndarray:
        """Upper bound on |float32 score - float64 score| per query (rounding of inputs, products and sums)."""
        gamma = (dim + 4) * _U32 / (1 - (dim + 4) * _U32)
        if self.metric == "cosine":  # unit vectors: |sum a_i b_i| error <= gamma * |a| |b|, plus input rounding
            bound32, scale = gamma + 4 * _U32, np.ones_like(q_norms)
        else:  # 2 q.y - |y|^2 with |q| <= q_norm and |y| <= max_norm
            scale = 2 * q_norms * self.max_norm + self.max_norm**2 + q_norms**2
            bound32 = gamma + 6 * _U32
        return 1.05 * (bound32 + 4 * (dim + 4) * _U64) * scale

    def _pair_scores(self, q64: np.ndarray, y64: np.ndarray, q_norms: np.ndarray, y_norms: np.ndarray) -> np.ndarray:
        """Float64 scores of queries (b, D) against their own items (b, c, D); larger is better.

        The one place where float64 scores are computed (candidates and rescans alike). einsum reduces each pair
        along the contiguous last axis in one call, independent of the batch shape, so a pair gets the same bits
        on every path and for every tile size (exact copies of a vector tie exactly and are ordered by row).
        """
        if self.metric == "cosine":
            return np.einsum("ij,ikj->ik", q64, y64) / (q_norms[:, None] * y_norms)
        diff = q64[:, None, :] - y64
        return -np.einsum("ikj,ikj->ik", diff, diff)

    def _refine(self, queries: _Queries, q_codes: np.ndarray, r0: int, r1: int, cand_s32: np.ndarray,
                cand_rows: np.ndarray, k: int, dim: int, out_rows: np.ndarray, out_scores: np.ndarray) -> list[int]:
        """Re-score candidates in float64, rank them, and return the query positions that need a full rescan."""
        valid = np.isfinite(cand_s32)
        safe_rows = np.where(valid, cand_rows, 0)
        q_norms = queries.norms[r0:r1]
        s64 = self._pair_scores(queries.block64(r0, r1), self._gather64(safe_rows), q_norms, self.norms[safe_rows])
        s64 = np.where(valid, s64, -np.inf)
        order = np.lexsort((cand_rows, -s64), axis=-1)[:, :k]
        top_rows = np.take_along_axis(cand_rows, order, axis=1)
        top_s = np.take_along_axis(s64, order, axis=1)
        top_valid = np.take_along_axis(valid, order, axis=1)
        n_valid = valid.sum(axis=1)
        # Certified when every admissible item is a candidate, or when the worst float32 candidate cannot reach the
        # k-th float64 score even with the largest possible rounding error.
        n_cand = cand_s32.shape[1]
        if n_cand == self.x.shape[0]:  # the whole database is a candidate
            return self._store(r0, r1, top_rows, top_s, top_valid, out_rows, out_scores, [])
        kth = top_s[:, k - 1]
        if self.metric == "euclidean":  # float32 scores omit |q|^2
            kth = kth + q_norms**2
        worst32 = np.where(valid, cand_s32, np.inf).min(axis=1)
        certified = (n_valid < n_cand) | (worst32 + self._tolerance(q_norms, dim) < kth)
        return self._store(r0, r1, top_rows, top_s, top_valid, out_rows, out_scores,
                           [r0 + int(i) for i in np.flatnonzero(~certified)])

    def _store(self, r0: int, r1: int, top_rows: np.ndarray, top_s: np.ndarray, top_valid: np.ndarray,
               out_rows: np.ndarray, out_scores: np.ndarray, rescan: list[int]) -> list[int]:
        kk = top_rows.shape[1]  # < k only when the database itself is smaller than k
        out_rows[r0:r1, :kk] = np.where(top_valid, top_rows, -1)
        out_scores[r0:r1, :kk] = self._report(np.where(top_valid, top_s, np.nan))
        return rescan

    def _rescan_row(self, queries: _Queries, q_codes: np.ndarray, i: int, k: int, db_block_size: int,
                    out_rows: np.ndarray, out_scores: np.ndarray) -> None:
        """Exact float64 top-k of one query over the whole database (the rare uncertified case)."""
        q64, q_norm = queries.block64(i, i + 1), queries.norms[i:i + 1]
        best_rows = np.empty(0, dtype=np.int64)
        best_s = np.empty(0, dtype=np.float64)
        n_db = self.x.shape[0]
        for d0 in range(0, n_db, db_block_size):
            d1 = min(d0 + db_block_size, n_db)
            rows = np.arange(d0, d1, dtype=np.int64)
            rows = rows[self.codes[d0:d1] != q_codes[i]]
            s = self._pair_scores(q64, self._gather64(rows[None]), q_norm, self.norms[rows][None])[0]
            best_rows, best_s = np.concatenate([best_rows, rows]), np.concatenate([best_s, s])
            keep = np.lexsort((best_rows, -best_s))[:k]
            best_rows, best_s = best_rows[keep], best_s[keep]
        out_rows[i] = -1
        out_scores[i] = np.nan
        out_rows[i, :best_rows.size] = best_rows
        out_scores[i, :best_rows.size] = self._report(best_s)

    def _gather64(self, rows: np.ndarray) -> np.ndarray:
        """Database rows (any index shape) as float64, shape rows.shape + (D,)."""
        flat = np.take(self.x, rows.reshape(-1), axis=0)
        return flat.astype(np.float64, copy=False).reshape(*rows.shape, self.x.shape[1])

    def _report(self, s64: np.ndarray) -> np.ndarray:
        """Internal 'larger is better' scores -> reported values (similarity; squared distance until the end)."""
        return s64 if self.metric == "cosine" else -s64


def _empty_candidates(n: int, n_cand: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Running candidates: float32 scores (-inf = none yet) and database rows (-1 = none yet)."""
    return torch.full((n, n_cand), float("-inf")), torch.full((n, n_cand), -1, dtype=torch.int64)


def _fold(best_s: torch.Tensor, best_i: torch.Tensor, r0: int, r1: int, s: torch.Tensor, offset: int) -> None:
    """Merge a tile's per-row top candidates (column ``j`` is item ``offset + j``) into rows r0..r1 in place."""
    n_cand = best_s.shape[1]
    ts, ti = torch.topk(s, min(n_cand, s.shape[1]), dim=1, sorted=False)
    ts, ti = torch.cat([best_s[r0:r1], ts], dim=1), torch.cat([best_i[r0:r1], ti + offset], dim=1)
    ts, pos = torch.topk(ts, n_cand, dim=1, sorted=False)
    best_s[r0:r1], best_i[r0:r1] = ts, torch.gather(ti, 1, pos)


def _row_norms(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty(rows.shape[0], dtype=np.float64)
    for lo in range(0, rows.shape[0], 8192):
        v = x[rows[lo:lo + 8192]].astype(np.float64)
        out[lo:lo + 8192] = np.sqrt((v * v).sum(axis=1))
    return out


def _refuse_zero(norms: np.ndarray, rows: np.ndarray, what: str) -> None:
    zero = norms == 0
    if zero.any():
        raise ValueError(f"cosine similarity is undefined for the all-zero {what} row {int(rows[zero][0])}")


@contextlib.contextmanager
def _highest_float32_precision() -> Iterator[None]:
    """The error bound assumes true float32 products: refuse reduced-precision (bf16/tf32) matmul for the search."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
