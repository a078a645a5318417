"""Exact k-nearest neighbours over embeddings (cosine or euclidean), never N x N in memory.

How: faiss's exact flat search (the kernel of ``IndexFlatIP`` / ``IndexFlatL2``: BLAS float32 products and a
per-query heap) proposes C = k + margin float32 candidates per query. The candidates are then re-scored in float64
and ranked by (score, database row), so ties are broken by the lower row. A query's result is certified exact when
the worst float32 candidate, plus a rigorous bound on the float32 rounding error, is still strictly worse than the
float64 k-th score: then no item outside the candidates can reach the top k. Rows that cannot be certified
(near-duplicates crowding the margin) are rescanned fully in float64. The result is therefore the exact top-k of
the float64 scores, identical for every block size, thread count and candidate engine (issue 14 replaced a torch
float32 stage with faiss: same bits, 1.1-1.3x faster; BENCHMARKS.md). Memory: one block of queries x candidates
plus faiss's own tiles, never N x N.

Engines (``engine``): ``cpu`` is faiss-cpu's ``faiss.knn``; ``gpu`` is faiss-gpu's brute-force ``knn_gpu`` (cuBLAS
GEMM + GPU k-selection) on GPU nodes where faiss-gpu is installed in place of faiss-cpu; ``auto`` takes the GPU when
faiss sees one and the job runs on a GPU (``device.job_device``). A GPU GEMM may round its inputs to TF32 (10
mantissa bits) on tensor cores, so the GPU's bound allows for that. Every candidate's float32 score is also checked
against its float64 score: a candidate off by more than the bound means the engine is noisier than assumed, and then
the block's queries are rescanned in float64 and the search goes on with faiss-cpu (logged). The float64 stage
decides every result, so the engines give the same bits.

Exclusions: an ``identity`` per item; an item never counts as a neighbour of a query with the same identity (the
query itself included, by default every item is its own identity). faiss cannot mask per query, so the candidate
stage fetches extra rows for small identity groups and drops them, and searches around a large group's rows
(the database is kept grouped by identity, so they are one contiguous range).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import faiss
import numpy as np
import torch  # only for the job's thread count (the stages set torch's)

from ..device import job_device
from ..log import Progress

LOG = logging.getLogger(__name__)

Metric = Literal["cosine", "euclidean"]
METRICS: tuple[str, ...] = ("cosine", "euclidean")
_U32 = 2.0**-24  # unit roundoff of float32
_U64 = 2.0**-53
_REFINE_ROWS = 32  # queries re-scored together in float64 (memory: rows x C x D x 8 bytes)
# A query whose identity covers at most this many database rows gets that many extra faiss candidates (cheap: faiss
# costs about the same for 62 and 300 candidates); larger identities are searched around instead.
_OVERFETCH_MAX = 256
# Queries per faiss call, at least: fewer, larger OpenMP regions. On an overloaded CPU, calls of 1024 queries spent
# half again as much CPU time (threads waiting on each other) as calls of 4096; on a quiet one they are equal.
_FAISS_QUERIES = 4096


ENGINES: tuple[str, ...] = ("auto", "cpu", "gpu")
_U_TF32 = 2.0**-10  # a float32 input cut to TF32's 10 mantissa bits (truncation, the worse of cut and rounding)
_GPU_MAX_K = 2048  # faiss-gpu's k-selection takes at most this many neighbours per call


class CpuEngine:
    """faiss-cpu's exact search: IEEE float32 products of the inputs as they are."""

    name = "faiss-cpu"
    input_unit = 0.0  # relative rounding of the inputs before the products (beyond float32's own)

    def top(self, q32: np.ndarray, xb: np.ndarray, n: int, metric: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss.knn(q32, xb, n, metric=metric)


class GpuEngine:
    """faiss-gpu's brute-force search on CUDA device ``device`` (one ``StandardGpuResources`` per search); calls
    asking for more than ``_GPU_MAX_K`` candidates go to faiss-cpu."""

    name = "faiss-gpu"
    input_unit = _U_TF32

    def __init__(self, device: int) -> None:
        self.device = int(device)
        self.resources = faiss.StandardGpuResources()
        self.cpu = CpuEngine()

    def top(self, q32: np.ndarray, xb: np.ndarray, n: int, metric: int) -> tuple[np.ndarray, np.ndarray]:
        if n > _GPU_MAX_K:
            return self.cpu.top(q32, xb, n, metric)
        return faiss.knn_gpu(self.resources, q32, xb, n, metric=metric, device=self.device)


def faiss_gpus() -> int:
    """GPUs faiss can use: 0 with faiss-cpu (no GPU module) or when no GPU is visible."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def candidate_engine(engine: str) -> CpuEngine | GpuEngine:
    """The engine that proposes the float32 candidates: ``cpu``, ``gpu`` (an error without one) or ``auto`` (the
    GPU when faiss sees one and the job's device, ``device.job_device``, is a GPU)."""
    if engine not in ENGINES:
        raise ValueError(f"knn engine must be one of {ENGINES}, got {engine!r}")
    if engine == "cpu":
        return CpuEngine()
    device = job_device() if faiss_gpus() else None
    if device is not None and device.type == "cuda":
        return GpuEngine(device.index or 0)
    if engine == "gpu":
        raise ValueError(
            f"knn engine 'gpu': {'the job runs on ' + str(device) if device else 'faiss sees no GPU'} (faiss-gpu "
            "must be installed in place of faiss-cpu, and the job must see a GPU: README, 'GPU nodes')"
        )
    return CpuEngine()


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


def knn(
    x: np.ndarray,
    k: int,
    *,
    metric: Metric = "cosine",
    identity: Sequence | np.ndarray | None = None,
    rows: np.ndarray | Sequence[int] | None = None,
    block_size: int = 1024,
    db_block_size: int = 16384,
    margin: int | None = None,
    engine: str = "cpu",
) -> Neighbours:
    """The k nearest neighbours of ``x[rows]`` (default: every row) among all rows of ``x``.

    An item is never its own neighbour, nor a neighbour of any item with an equal ``identity`` (e.g. a shape id
    shared by several views). ``block_size`` queries at a time (4096 at least) bound the candidates' memory (faiss
    tiles its products itself); ``db_block_size`` database rows bound the float64 rescan of an uncertified query.
    """
    _check_search_args(k, block_size, db_block_size, margin)
    x = _check_matrix(x, "embeddings")
    n = x.shape[0]
    codes = np.arange(n, dtype=np.int64) if identity is None else _identity_codes(identity, n)
    query_rows = np.arange(n, dtype=np.int64) if rows is None else _check_rows(rows, n)
    index = _Database(x, metric, codes, candidate_engine(engine))
    queries = _Queries(x, metric, query_rows, norms=index.norms[query_rows])
    result = index.search(queries, codes[query_rows], k, block_size, db_block_size, margin)
    return Neighbours(result.rows, result.scores, metric, query_rows, result.n_rescanned)


def search(
    queries: np.ndarray,
    database: np.ndarray,
    k: int,
    *,
    metric: Metric = "cosine",
    query_identity: Sequence | np.ndarray | None = None,
    database_identity: Sequence | np.ndarray | None = None,
    block_size: int = 1024,
    db_block_size: int = 16384,
    margin: int | None = None,
    engine: str = "cpu",
) -> Neighbours:
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
        both = _identity_codes(
            np.concatenate(
                [
                    _as_identity(query_identity, nq, "query_identity"),
                    _as_identity(database_identity, nd, "database_identity"),
                ]
            ),
            nq + nd,
        )
        q_codes, d_codes = both[:nq], both[nq:]
    index = _Database(database, metric, d_codes, candidate_engine(engine))
    result = index.search(
        _Queries(queries, metric, np.arange(nq, dtype=np.int64)), q_codes, k, block_size, db_block_size, margin
    )
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
        self.x, self.metric, self.rows = x, metric, rows
        self.norms = _row_norms(x, rows) if norms is None else norms
        if metric == "cosine":
            _refuse_zero(self.norms, rows, "query")

    def take(self, order: np.ndarray) -> _Queries:
        """The same queries in another order."""
        return _Queries(self.x, self.metric, self.rows[order], self.norms[order])

    def block32(self, lo: int, hi: int) -> np.ndarray:
        v = self.x[self.rows[lo:hi]].astype(np.float64)
        if self.metric == "cosine":
            v /= self.norms[lo:hi, None]
        return v.astype(np.float32)

    def block64(self, lo: int, hi: int) -> np.ndarray:
        return self.x[self.rows[lo:hi]].astype(np.float64)


class _Database:
    """Database vectors prepared once: float64 norms for the re-rank, and for faiss a float32 matrix (unit rows for
    cosine) whose rows are grouped by identity (``code_order``), so one identity's rows are one contiguous range."""

    def __init__(self, x: np.ndarray, metric: str, codes: np.ndarray, engine: CpuEngine | GpuEngine | None = None):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.x, self.metric, self.codes = x, metric, codes
        self.engine = engine or CpuEngine()
        n = x.shape[0]
        self.norms = _row_norms(x, np.arange(n))
        self.code_order = np.argsort(codes, kind="stable")
        self.sorted_codes = codes[self.code_order]
        if metric == "cosine":
            _refuse_zero(self.norms, np.arange(n), "database")
        self.x32 = self._float32_rows()
        self.max_norm = float(self.norms.max())

    def _float32_rows(self) -> np.ndarray:
        """x[code_order] as float32 (unit rows for cosine), built in slices so no float64 copy of x exists."""
        order, n = self.code_order, self.x.shape[0]
        if self.metric == "euclidean" and (order == np.arange(n)).all():
            return np.ascontiguousarray(self.x, dtype=np.float32)  # no copy for C-ordered float32 input
        out = np.empty(self.x.shape, dtype=np.float32)
        for lo in range(0, n, 8192):
            rows = order[lo : lo + 8192]
            v = self.x[rows].astype(np.float64)
            out[lo : lo + 8192] = v / self.norms[rows, None] if self.metric == "cosine" else v
        return out

    def group_sizes(self, q_codes: np.ndarray) -> np.ndarray:
        """Number of database rows sharing each query's identity (all excluded for that query)."""
        return np.searchsorted(self.sorted_codes, q_codes, side="right") - np.searchsorted(
            self.sorted_codes, q_codes, side="left"
        )

    def search(
        self, queries: _Queries, q_codes: np.ndarray, k: int, block_size: int, db_block_size: int, margin: int | None
    ) -> _Result:
        """Exact top-k of every query."""
        k = int(k)
        n_db, dim = self.x.shape
        n_cand = min(k + (max(8, k // 4) if margin is None else int(margin)), n_db)
        nq = queries.rows.shape[0]
        order, blocks = self._plan(q_codes, max(block_size, _FAISS_QUERIES))
        queries, q_codes = queries.take(order), q_codes[order]
        rows = np.full((nq, k), -1, dtype=np.int64)
        scores = np.full((nq, k), np.nan, dtype=np.float64)
        n_rescanned = 0
        progress = Progress(LOG, nq, "knn queries", every=max(nq, 1), seconds=60.0)
        with _faiss_threads(torch.get_num_threads()):
            for lo, hi in blocks:
                block = (queries, q_codes, lo, hi, n_cand, k, dim, db_block_size, rows, scores)
                n_block, trusted = self._search_block(*block)
                if not trusted:  # the engine rounds more than its bound allows: this block again, on faiss-cpu
                    self.engine = CpuEngine()
                    n_block, _ = self._search_block(*block)
                n_rescanned += n_block
                progress.step(hi - lo)
        if self.metric == "euclidean":
            np.sqrt(scores, out=scores)
        LOG.info(
            "knn (%s): %d queries x %d items, dim %d, k=%d, %d candidates per query; %d queries rescanned in float64",
            self.metric,
            nq,
            n_db,
            dim,
            k,
            n_cand,
            n_rescanned,
        )
        out_rows, out_scores = np.empty_like(rows), np.empty_like(scores)
        out_rows[order], out_scores[order] = rows, scores
        return _Result(out_rows, out_scores, n_rescanned)

    def _search_block(
        self,
        queries: _Queries,
        q_codes: np.ndarray,
        lo: int,
        hi: int,
        n_cand: int,
        k: int,
        dim: int,
        db_block_size: int,
        rows: np.ndarray,
        scores: np.ndarray,
    ) -> tuple[int, bool]:
        """Exact top-k of queries lo..hi into ``rows`` / ``scores``: (queries rescanned, whether every candidate's
        float32 score was within the engine's bound; False stops the block early, its rows to be redone)."""
        cand_s32, cand_rows = self._candidates(queries, q_codes, lo, hi, n_cand)
        n_rescanned = 0
        for r0 in range(lo, hi, _REFINE_ROWS):
            r1 = min(r0 + _REFINE_ROWS, hi)
            part = slice(r0 - lo, r1 - lo)
            rescan = self._refine(queries, q_codes, r0, r1, cand_s32[part], cand_rows[part], k, dim, rows, scores)
            if rescan is None:
                return n_rescanned, False
            for i in rescan:
                self._rescan_row(queries, q_codes, i, k, db_block_size, rows, scores)
            n_rescanned += len(rescan)
        return n_rescanned, True

    # -- float32 candidates (faiss) --

    def _plan(self, q_codes: np.ndarray, block_size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Query order and blocks for the candidate stage.

        Queries whose identity covers at most ``_OVERFETCH_MAX`` database rows keep their order and are searched in
        blocks with that many extra candidates. The others are grouped by identity: each block holds one identity
        and searches the database around its rows. The order only changes which float32 candidates are found
        together, never the certified result.
        """
        big = self.group_sizes(q_codes) > _OVERFETCH_MAX
        key = np.where(big, q_codes, -1)  # small groups first (in order), then one run per large identity
        order = np.argsort(key, kind="stable")
        key = key[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        runs = list(zip(starts, np.r_[starts[1:], key.size])) if big.any() else [(0, key.size)]
        blocks = [(int(lo), int(min(lo + block_size, hi))) for a, hi in runs for lo in range(a, hi, block_size)]
        return order, blocks

    def _candidates(
        self, queries: _Queries, q_codes: np.ndarray, lo: int, hi: int, n_cand: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Float32 scores (float64 array, -inf = no candidate) and database rows of the ``n_cand`` best admissible
        items of queries lo..hi. Scores are 'larger is better': cosine, or 2 q.y - |y|^2 for euclidean."""
        q32, codes = queries.block32(lo, hi), q_codes[lo:hi]
        sizes = self.group_sizes(codes)
        if codes[0] == codes[-1] and sizes[0] > _OVERFETCH_MAX:  # one large identity: search around its rows
            a = int(np.searchsorted(self.sorted_codes, codes[0], side="left"))
            parts = [self._faiss_top(q32, start, stop, n_cand) for start, stop in ((0, a), (a + sizes[0], None))]
            s, pos = np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1)
        else:  # enough extra candidates to cover every excluded row, which are then dropped
            s, pos = self._faiss_top(q32, 0, None, n_cand + int(sizes.max()))
        if self.metric == "euclidean":  # faiss gives |q - y|^2; |q|^2 minus that ranks like 2 q.y - |y|^2
            s = queries.norms[lo:hi, None] ** 2 - s
        rows = self.code_order[np.maximum(pos, 0)]
        s[(pos < 0) | (self.codes[rows] == codes[:, None])] = -np.inf
        return _best_columns(s, rows, n_cand)

    def _faiss_top(self, q32: np.ndarray, start: int, stop: int | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's exact top-``n`` among database positions start..stop (grouped order): float64 scores (cosine
        similarity or squared distance; -inf/+inf where none) and positions (-1 where none)."""
        xb = self.x32[start:stop]
        n = min(n, xb.shape[0])
        if n == 0:
            return np.empty((q32.shape[0], 0)), np.empty((q32.shape[0], 0), dtype=np.int64)
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
        s, pos = self.engine.top(q32, xb, n, metric)
        return s.astype(np.float64), np.where(pos >= 0, pos + start, -1)

    def _tolerance(self, q_norms: np.ndarray, dim: int) -> np.ndarray:
        """Upper bound on |float32 score - float64 score| per query (rounding of inputs, products and sums)."""
        gamma = (dim + 4) * _U32 / (1 - (dim + 4) * _U32)
        if self.metric == "cosine":  # unit vectors: |sum a_i b_i| error <= gamma * |a| |b|, plus input rounding
            bound32, scale = gamma + 4 * _U32, np.ones_like(q_norms)
        else:  # faiss: float32 |q|^2 + |y|^2 - 2 q.y (or the sum of (q_i - y_i)^2 for a few queries); the
            # products within gamma, input rounding and the additions within 6 u, all of (|q| + |y|)^2 at most
            scale = 2 * q_norms * self.max_norm + self.max_norm**2 + q_norms**2
            bound32 = gamma + 6 * _U32
        # an engine that rounds its inputs (TF32 on tensor cores) adds (2 v + v^2) |a| |b| to every product sum
        u_in = self.engine.input_unit
        bound32 += (2 * u_in + u_in**2) * (1 + gamma)
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

    def _refine(
        self,
        queries: _Queries,
        q_codes: np.ndarray,
        r0: int,
        r1: int,
        cand_s32: np.ndarray,
        cand_rows: np.ndarray,
        k: int,
        dim: int,
        out_rows: np.ndarray,
        out_scores: np.ndarray,
    ) -> list[int] | None:
        """Re-score candidates in float64, rank them, and return the query positions that need a full rescan; None
        when a candidate's float32 score is off its float64 score by more than the engine's bound (faiss-cpu's
        bound is rigorous: should it ever fail, every query of the chunk is rescanned instead)."""
        valid = np.isfinite(cand_s32)
        safe_rows = np.where(valid, cand_rows, 0)
        q_norms = queries.norms[r0:r1]
        s64 = self._pair_scores(queries.block64(r0, r1), self._gather64(safe_rows), q_norms, self.norms[safe_rows])
        s64 = np.where(valid, s64, -np.inf)
        tolerance = self._tolerance(q_norms, dim)
        if not self._within_bound(cand_s32, s64, valid, q_norms, tolerance):
            return list(range(r0, r1)) if isinstance(self.engine, CpuEngine) else None
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
        certified = (n_valid < n_cand) | (worst32 + tolerance < kth)
        return self._store(
            r0, r1, top_rows, top_s, top_valid, out_rows, out_scores, [r0 + int(i) for i in np.flatnonzero(~certified)]
        )

    def _within_bound(
        self, cand_s32: np.ndarray, s64: np.ndarray, valid: np.ndarray, q_norms: np.ndarray, tolerance: np.ndarray
    ) -> bool:
        """Whether every candidate's float32 score lies within the bound of its float64 score: a check of the
        engine's rounding model on the items it proposed (the certificate assumes it for every item)."""
        exact = s64 + q_norms[:, None] ** 2 if self.metric == "euclidean" else s64  # float32 scores omit -|q|^2
        off = np.zeros_like(cand_s32)
        off[valid] = np.abs(cand_s32[valid] - exact[valid])
        off = off.max(axis=1)
        ratio = off / tolerance
        if (ratio <= 1.0).all():
            return True
        LOG.warning(
            "knn: %s scores are off by up to %.3g x the rounding bound it is certified with; rescanning in "
            "float64 (and going on with faiss-cpu)",
            self.engine.name,
            float(ratio.max()),
        )
        return False

    def _store(
        self,
        r0: int,
        r1: int,
        top_rows: np.ndarray,
        top_s: np.ndarray,
        top_valid: np.ndarray,
        out_rows: np.ndarray,
        out_scores: np.ndarray,
        rescan: list[int],
    ) -> list[int]:
        kk = top_rows.shape[1]  # < k only when the database itself is smaller than k
        out_rows[r0:r1, :kk] = np.where(top_valid, top_rows, -1)
        out_scores[r0:r1, :kk] = self._report(np.where(top_valid, top_s, np.nan))
        return rescan

    def _rescan_row(
        self,
        queries: _Queries,
        q_codes: np.ndarray,
        i: int,
        k: int,
        db_block_size: int,
        out_rows: np.ndarray,
        out_scores: np.ndarray,
    ) -> None:
        """Exact float64 top-k of one query over the whole database (the rare uncertified case)."""
        q64, q_norm = queries.block64(i, i + 1), queries.norms[i : i + 1]
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
        out_rows[i, : best_rows.size] = best_rows
        out_scores[i, : best_rows.size] = self._report(best_s)

    def _gather64(self, rows: np.ndarray) -> np.ndarray:
        """Database rows (any index shape) as float64, shape rows.shape + (D,)."""
        flat = np.take(self.x, rows.reshape(-1), axis=0)
        return flat.astype(np.float64, copy=False).reshape(*rows.shape, self.x.shape[1])

    def _report(self, s64: np.ndarray) -> np.ndarray:
        """Internal 'larger is better' scores -> reported values (similarity; squared distance until the end)."""
        return s64 if self.metric == "cosine" else -s64


def _best_columns(s: np.ndarray, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best-scoring columns of each row, in any order; padded with -inf / -1 when there are fewer."""
    if s.shape[1] > n:
        keep = np.argpartition(-s, n - 1, axis=1)[:, :n]
        return np.take_along_axis(s, keep, axis=1), np.take_along_axis(rows, keep, axis=1)
    pad = ((0, 0), (0, n - s.shape[1]))
    return np.pad(s, pad, constant_values=-np.inf), np.pad(rows, pad, constant_values=-1)


def _row_norms(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.empty(rows.shape[0], dtype=np.float64)
    for lo in range(0, rows.shape[0], 8192):
        v = x[rows[lo : lo + 8192]].astype(np.float64)
        out[lo : lo + 8192] = np.sqrt((v * v).sum(axis=1))
    return out


def _refuse_zero(norms: np.ndarray, rows: np.ndarray, what: str) -> None:
    zero = norms == 0
    if zero.any():
        raise ValueError(f"cosine similarity is undefined for the all-zero {what} row {int(rows[zero][0])}")


@contextlib.contextmanager
def _faiss_threads(n: int) -> Iterator[None]:
    """faiss (its OpenMP and the OpenBLAS it bundles) on the job's thread count: the stages set torch's
    (``torch.set_num_threads``), and faiss would otherwise take every core of the node."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)
