"""CPAC-UDF: a completion probe. From a context of points with distances, predict the exact distance elsewhere.

Per shape, ``n_context + n_query`` DISJOINT indices are drawn from the shape's query pool in one draw (keyed by
seed, role and shape id via ``pipeline3d.rng``). The context points carry the distance their backend knows
(``pool_dist_pc`` for point clouds, ``pool_dist_grid`` for the UDF grid ...), read through ``backend.open`` so a
context can never reach another primitive's arrays. The target is the EXACT mesh distance ``pool_dist_mesh`` at
the query points, read by a separate mesh-restricted reader: ground truth for evaluation, never model input (the
reference regressed the coarse, biased UDF grid; nepa3d-spec §1.6, §10 item 6).

Sequence (see ``build_sequence``): the context is tokenized by the real tokenizer (Morton order, Q/A pairs or
POINT tokens, fixed segment positions, EOS at its pretrained position); the queries, Morton-ordered, are inserted
before the EOS as query-only tokens:

* Q/A tokens: one ``Q_POINT`` (xyz only) per query and NO answer token. The query's representation is the hidden
  state at its own ``Q_POINT``. (The reference appended fake ``dist = 0`` answers: queries posed as on-surface
  points, and later queries attended to those fake answers.)
* legacy tokens (no Q/A types): the only query form the model knows is a ``POINT`` token, so a query is a POINT
  with its distance slot zeroed. The model reads that as an on-surface point; the metrics JSON records this caveat.

Query positions and attention: every query token gets the position of the NEXT point slot after the context,
``1 + k * n_context`` (k = 2 with Q/A tokens, 1 without): exactly where the pretrained model saw the first query
that follows ``n_context`` answered points. Queries never attend to one another, and no other token attends to
a query (an extra attention block; each query still attends to itself). So, under causal attention, a query's
hidden state equals that of the pretraining prefix ``[BOS] + context + query``, batched; it does not depend on
the other queries, their number or order, and bidirectional (MAE) encoders do not mix queries into the context.
The next point slot must exist: ``n_context`` < the pretrained point capacity.

Ridge head: closed form in float64 on the normal equations ``(AᵀA + λ·D) β = Aᵀy`` with ``A = [X, 1]`` and D the
identity without the bias entry (the bias is not penalised; this is sklearn's ``Ridge(fit_intercept=True)``),
solved with ``np.linalg.solve``. AᵀA is accumulated shape by shape in a fixed order, so the head does not depend on
the batch size and never holds all features in memory.

Metrics (``summarize``): MAE, RMSE, bias and IoU@τ = |{y ≤ τ} ∩ {ŷ ≤ τ}| / |{y ≤ τ} ∪ {ŷ ≤ τ}|, pooled over all
query points, pooled within each class, and per shape (mean ± std over shapes; a shape whose union is empty has
no IoU and is left out of the IoU mean, its count is reported).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..device import model_device, to_device, to_host
from ..io.shards import ShardReader
from ..log import Progress
from ..rng import rng_for, stable_hash
from ..tokens import layout as L
from ..tokens.backends import Backend, get_backend
from ..tokens.layout import TokenConfig
from ..tokens.ordering import morton_order
from ..tokens.tokenizer import tokenize

log = logging.getLogger(__name__)

STAGE = "eval_cpac"
TARGET_KEY = "pool_dist_mesh"
TARGET_PRIMITIVE = "mesh"
ROLES = ("head", "test")
LEGACY_CAVEAT = ("legacy tokens have no query-only type: each query is a POINT token with its distance slot set to "
                 "0, which the model reads as an on-surface point")


# -- ridge ---------------------------------------------------------------------------------------------------------

class RidgeAccumulator:
    """Normal equations of a ridge regression with an unpenalised bias, accumulated in float64 block by block."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.gram = np.zeros((dim + 1, dim + 1), dtype=np.float64)  # AᵀA with A = [X, 1]
        self.moment = np.zeros(dim + 1, dtype=np.float64)  # Aᵀy
        self.n = 0
        self.y_sum = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != self.dim or len(x) != len(y):
            raise ValueError(f"ridge: expected X (n, {self.dim}) and y (n,), got {x.shape} and {y.shape}")
        a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        self.gram += a.T @ a
        self.moment += a.T @ y
        self.n += len(y)
        self.y_sum += float(y.sum())

    @property
    def y_mean(self) -> float:
        if self.n == 0:
            raise ValueError("ridge: no training points")
        return self.y_sum / self.n

    def solve(self, lam: float) -> tuple[np.ndarray, float]:
        """(weights (d,), bias) minimising ||Xw + b - y||² + λ||w||²."""
        if self.n == 0:
            raise ValueError("ridge: no training points")
        if lam < 0:
            raise ValueError(f"ridge lambda must be >= 0 (got {lam})")
        penalty = np.full(self.dim + 1, float(lam))
        penalty[-1] = 0.0  # the bias is not penalised
        try:
            beta = np.linalg.solve(self.gram + np.diag(penalty), self.moment)
        except np.linalg.LinAlgError as exc:
            raise ValueError(f"ridge: singular normal equations ({self.n} points, {self.dim} features, "
                             f"lambda {lam}); use a positive ridge_lambda") from exc
        return beta[:-1], float(beta[-1])


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Closed-form ridge with an unpenalised bias column (float64, ``np.linalg.solve``)."""
    acc = RidgeAccumulator(np.asarray(x).shape[1])
    acc.add(x, y)
    return acc.solve(lam)


def ridge_predict(x: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) @ weights + bias


# -- metrics -------------------------------------------------------------------------------------------------------

def iou_at(y: np.ndarray, yhat: np.ndarray, tau: float) -> float | None:
    """|{y ≤ τ} ∩ {ŷ ≤ τ}| / |{y ≤ τ} ∪ {ŷ ≤ τ}|; None when the union is empty (undefined)."""
    near, near_hat = np.asarray(y) <= tau, np.asarray(yhat) <= tau
    union = int((near | near_hat).sum())
    return None if union == 0 else int((near & near_hat).sum()) / union


def point_metrics(y: np.ndarray, yhat: np.ndarray, tau: float) -> dict[str, Any]:
    """MAE, RMSE, bias (mean ŷ - y), IoU@τ and the number of points, pooled over the given points."""
    y, yhat = np.asarray(y, dtype=np.float64).ravel(), np.asarray(yhat, dtype=np.float64).ravel()
    if y.shape != yhat.shape or y.size == 0:
        raise ValueError(f"need equal, non-empty target and prediction arrays (got {y.shape} and {yhat.shape})")
    err = yhat - y
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())), "bias": float(err.mean()),
            "iou": iou_at(y, yhat, tau), "n_points": int(y.size)}


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def summarize(y: np.ndarray, yhat: np.ndarray, labels: Sequence[int], class_names: Mapping[int, str],
              tau: float) -> dict[str, Any]:
    """Metrics of (S, Q) targets / predictions of S shapes (labels: one per shape).

    ``pooled``: over all points; ``per_class``: class name -> pooled within the class (+ n_shapes);
    ``per_shape``: mean and std (population) over shapes of each shape's own MAE / RMSE / bias / IoU.
    """
    y, yhat = np.asarray(y, dtype=np.float64), np.asarray(yhat, dtype=np.float64)
    labels = np.asarray(labels)
    if y.ndim != 2 or y.shape != yhat.shape or len(labels) != len(y):
        raise ValueError(f"summarize: need (S, Q) targets and predictions and S labels (got {y.shape}, "
                         f"{yhat.shape}, {labels.shape})")
    per_class = {}
    for label in sorted(set(labels.tolist())):
        mask = labels == label
        name = str(class_names.get(int(label), label))
        per_class[name] = point_metrics(y[mask], yhat[mask], tau) | {"n_shapes": int(mask.sum())}
    shapes = [point_metrics(y[s], yhat[s], tau) for s in range(len(y))]
    per_shape = {key: _mean_std([m[key] for m in shapes if m[key] is not None])
                 for key in ("mae", "rmse", "bias", "iou")}
    return {"pooled": point_metrics(y, yhat, tau), "per_class": per_class, "per_shape": per_shape}


# -- shape selection -----------------------------------------------------------------------------------------------

def stratified_subset(ids: Sequence[str], labels: Sequence[int], k: int | None, salt: str) -> list[str]:
    """At most ``k`` of ``ids`` (None = all), class-stratified, sorted by id.

    Per-class quotas are ``k · n_c / n`` with largest-remainder rounding (ties: smaller label first); inside a
    class the shapes with the smallest ``stable_hash(salt|id)`` are taken, so the choice depends on the ids
    only, never on their order.
    """
    ids, labels = [str(s) for s in ids], [int(c) for c in labels]
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    if k is None or k >= len(ids):
        return sorted(ids)
    if k < 1:
        raise ValueError(f"a shape cap must be >= 1 or null (got {k})")
    by_class: dict[int, list[str]] = {}
    for sid, c in zip(ids, labels):
        by_class.setdefault(c, []).append(sid)
    classes = sorted(by_class)
    exact = np.array([k * len(by_class[c]) / len(ids) for c in classes])
    quota = np.floor(exact).astype(int)
    for i in sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]), classes[i]))[: k - int(quota.sum())]:
        quota[i] += 1
    chosen = []
    for c, q in zip(classes, quota):
        chosen += sorted(by_class[c], key=lambda sid: (stable_hash(f"{salt}|{sid}"), sid))[:q]
    return sorted(chosen)


# -- draws and sequences -------------------------------------------------------------------------------------------

def draw_rng(seed: int, role: str, shape_id: str) -> np.random.Generator:
    """The generator of one shape's context/query draw for ``role`` (head fitting or testing)."""
    if role not in ROLES:
        raise ValueError(f"unknown CPAC role {role!r} (expected one of {ROLES})")
    return rng_for(seed, STAGE, f"{role}|{shape_id}")


def draw_context_query(pool_size: int, n_context: int, n_query: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (context, query) pool indices from one draw without replacement."""
    if n_context < 1 or n_query < 1:
        raise ValueError(f"n_context and n_query must be >= 1 (got {n_context}, {n_query})")
    if pool_size < n_context + n_query:
        raise ValueError(f"a pool of {pool_size} points cannot give {n_context} context + {n_query} query points "
                         "without overlap")
    idx = rng.choice(pool_size, size=n_context + n_query, replace=False)
    return idx[:n_context], idx[n_context:]


def context_token_config(pretrained: Mapping[str, Any], n_context: int) -> TokenConfig:
    """The context's token config inside the pretrained layout (no rays; one free point slot left for queries)."""
    cap_point = int(pretrained.get("layout_n_point") or pretrained["n_point"])
    cap_ray = int(pretrained.get("layout_n_ray") or pretrained["n_ray"])
    if n_context >= cap_point:
        raise ValueError(f"cpac.n_context = {n_context} leaves no point slot for the queries in the pretrained "
                         f"layout ({cap_point} points): use n_context <= {cap_point - 1}")
    return TokenConfig(n_point=int(n_context), n_ray=0, qa_tokens=bool(pretrained.get("qa_tokens", False)),
                       add_eos=bool(pretrained.get("add_eos", True)), drop_ray_prob=0.0,
                       layout_n_point=cap_point, layout_n_ray=cap_ray)


def query_position(cfg: TokenConfig) -> int:
    """The position every query token takes: the point slot right after the context."""
    return 1 + cfg.tokens_per_point * cfg.n_point


@dataclass(frozen=True)
class CpacSequence:
    """One shape's CPAC token sequence and what the metrics need besides the features."""

    feat: np.ndarray  # (T, 15) float32
    type_id: np.ndarray  # (T,) int64
    pos: np.ndarray  # (T,) int64
    query_slots: np.ndarray  # (Q,) indices of the query tokens in the sequence, in query (Morton) order
    query_index: np.ndarray  # (Q,) pool indices of the queries, in query order
    context_index: np.ndarray  # (C,) pool indices of the context (draw order)
    query_xyz: np.ndarray  # (Q, 3)
    context_xyz: np.ndarray  # (C, 3)
    context_dist: np.ndarray  # (C,) the context backend's distances


def build_sequence(pools: Mapping[str, Any], cfg: TokenConfig, n_query: int,
                   rng: np.random.Generator) -> CpacSequence:
    """Draw context + queries from a backend's pools and lay out ``[BOS] + context + queries + [EOS]``.

    The context goes through the real tokenizer (given only the drawn context points, it Morton-orders them and
    lays them out as in pretraining); queries are query-only tokens at ``query_position(cfg)`` (module docstring).
    """
    pt_xyz = np.asarray(pools["pt_xyz"])
    ctx, qry = draw_context_query(len(pt_xyz), cfg.n_point, n_query, rng)
    dist_of = pools["pt_dist"]
    ctx_dist = (dist_of(ctx) if callable(dist_of) else np.asarray(dist_of)[ctx]).astype(np.float32)
    ctx_pools = {"pt_xyz": pt_xyz[ctx], "pt_dist": ctx_dist}  # no ray arrays: the context is points only
    feat_c, type_c, pos_c = tokenize(ctx_pools, cfg, rng)

    qry = qry[morton_order(pt_xyz[qry])]
    q_feat = np.zeros((n_query, L.FEAT_DIM), dtype=np.float32)
    q_feat[:, L.XYZ] = pt_xyz[qry]  # legacy POINT: the distance slot stays 0 (the only query form it knows)
    q_type = np.full(n_query, L.Q_POINT if cfg.qa_tokens else L.POINT, dtype=np.int64)
    q_pos = np.full(n_query, query_position(cfg), dtype=np.int64)

    split = len(type_c) - int(cfg.add_eos)  # queries go before the EOS (causal attention: they never see it)
    feat = np.concatenate([feat_c[:split], q_feat, feat_c[split:]])
    type_id = np.concatenate([type_c[:split], q_type, type_c[split:]])
    pos = np.concatenate([pos_c[:split], q_pos, pos_c[split:]])
    return CpacSequence(feat=feat, type_id=type_id, pos=pos, query_slots=np.arange(split, split + n_query),
                     query_index=qry, context_index=ctx, query_xyz=pt_xyz[qry].astype(np.float64),
                     context_xyz=pt_xyz[ctx].astype(np.float64), context_dist=ctx_dist.astype(np.float64))


@torch.no_grad()
def query_features(encoder: nn.Module, sequences: Sequence[CpacSequence], *, batch_size: int,
                   causal: bool) -> list[np.ndarray]:
    """Float64 (Q, d) final hidden states at each sequence's query tokens.

    Every pass has ``batch_size`` rows (short batches padded with all-masked rows) and all sequences have the same
    length, so a shape's features do not depend on which shapes share its batch.
    """
    if not sequences:
        return []
    length = len(sequences[0].type_id)
    if any(len(s.type_id) != length for s in sequences):
        raise ValueError("CPAC sequences must all have the same length")
    encoder.eval()
    device = model_device(encoder)
    out: list[np.ndarray] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        feat = torch.zeros((batch_size, length, L.FEAT_DIM), dtype=torch.float32)
        type_id = torch.full((batch_size, length), L.PAD, dtype=torch.int64)
        pos = torch.zeros((batch_size, length), dtype=torch.int64)
        valid = torch.zeros((batch_size, length), dtype=torch.bool)
        block = torch.zeros((batch_size, length, length), dtype=torch.bool)
        for b, s in enumerate(chunk):
            feat[b], type_id[b] = torch.from_numpy(s.feat), torch.from_numpy(s.type_id)
            pos[b], valid[b] = torch.from_numpy(s.pos), True
            block[b, :, torch.from_numpy(s.query_slots)] = True  # nobody attends to a query (but itself)
        h = encoder(*to_device((feat, type_id, pos, valid), device), causal=causal,
                    extra_block=block.to(device)).h
        for b, s in enumerate(chunk):
            out.append(to_host(h[b, torch.from_numpy(s.query_slots).to(device)], np.float64))
    return out


# -- reading shapes ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CpacShape:
    shape_id: str
    shard_path: str
    row: int
    label: int


class ShapeSource:
    """Context pools through a backend's own restricted readers, targets through separate mesh readers."""

    def __init__(self, backend: str | Backend):
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self._context: dict[str, ShardReader] = {}
        self._target: dict[str, ShardReader] = {}

    def _readers(self, path: str) -> tuple[ShardReader, ShardReader]:
        if path not in self._context:
            self._context[path] = self.backend.open(path)
            target = ShardReader(path, TARGET_PRIMITIVE)
            if TARGET_KEY not in target.allowed:
                target.close()
                raise ValueError(f"{path}: the cache holds no exact mesh distances ({TARGET_KEY}); CPAC needs the "
                                 "cache of a mesh dataset")
            self._target[path] = target
        return self._context[path], self._target[path]

    def load(self, shape: CpacShape) -> tuple[dict[str, Any], np.ndarray]:
        """(the backend's pools, the exact distances over the pool) of one shape."""
        context, target = self._readers(shape.shard_path)
        if not 0 <= shape.row < len(context) or context.shape_ids[shape.row] != shape.shape_id:
            raise ValueError(f"{shape.shard_path}: row {shape.row} does not hold {shape.shape_id} (stale index?)")
        pools = self.backend.pools(context, shape.row)
        exact = np.asarray(target.read(shape.row, [TARGET_KEY])[TARGET_KEY], dtype=np.float64)
        return pools, exact

    def close(self) -> None:
        for reader in (*self._context.values(), *self._target.values()):
            reader.close()
        self._context, self._target = {}, {}


@dataclass
class ShapeResult:
    """Per shape: features at the queries, exact targets, and the geometry-only baselines' predictions."""

    shape: CpacShape
    features: np.ndarray  # (Q, d)
    target: np.ndarray  # (Q,)
    context_nn: np.ndarray  # (Q,) distance from each query to its nearest context point
    context_bound: np.ndarray  # (Q,) min over context of |q - c| + d(c): the 1-Lipschitz upper bound


def baselines(seq: CpacSequence) -> tuple[np.ndarray, np.ndarray]:
    gaps = np.linalg.norm(seq.query_xyz[:, None, :] - seq.context_xyz[None, :, :], axis=-1)
    return gaps.min(axis=1), (gaps + seq.context_dist[None, :]).min(axis=1)


def encode_shapes(encoder: nn.Module, shapes: Sequence[CpacShape], backend: str, cfg: TokenConfig, *,
                  n_query: int, seed: int, role: str, batch_size: int, causal: bool) -> Iterator[ShapeResult]:
    """ShapeResults of ``shapes`` (in order), batch by batch."""
    if batch_size < 1:
        raise ValueError(f"cpac.batch_size must be >= 1 (got {batch_size})")
    source = ShapeSource(backend)
    progress = Progress(log, len(shapes), f"{role} shapes ({backend} context)", every=max(batch_size, 500))
    try:
        for start in range(0, len(shapes), batch_size):
            chunk = shapes[start:start + batch_size]
            seqs, targets = [], []
            for shape in chunk:
                pools, exact = source.load(shape)
                try:
                    seq = build_sequence(pools, cfg, n_query, draw_rng(seed, role, shape.shape_id))
                except ValueError as exc:
                    raise ValueError(f"{shape.shape_id} ({shape.shard_path}): {exc}") from exc
                seqs.append(seq)
                targets.append(exact[seq.query_index])
            feats = query_features(encoder, seqs, batch_size=batch_size, causal=causal)
            for shape, seq, target, x in zip(chunk, seqs, targets, feats):
                nn_dist, bound = baselines(seq)
                yield ShapeResult(shape, x, target, nn_dist, bound)
            progress.step(len(chunk))
    finally:
        source.close()


def fit_head(results: Iterator[ShapeResult], lam: float) -> tuple[np.ndarray, float, float, int]:
    """(weights, bias, target mean, n_shapes) of the ridge head on streamed results (shape order)."""
    acc: RidgeAccumulator | None = None
    n_shapes = 0
    for r in results:
        acc = acc or RidgeAccumulator(r.features.shape[1])
        acc.add(r.features, r.target)
        n_shapes += 1
    if acc is None:
        raise ValueError("no shapes to fit the CPAC head on")
    weights, bias = acc.solve(lam)
    return weights, bias, acc.y_mean, n_shapes


def evaluate(results: Iterator[ShapeResult], weights: np.ndarray, bias: float, y_mean: float,
             class_names: Mapping[int, str], tau: float) -> tuple[dict[str, Any], int]:
    """Metrics of the probe and of the baselines (constant = head-train mean, context_nn, context_bound)."""
    ys, preds, nns, bounds, labels = [], [], [], [], []
    for r in results:
        ys.append(r.target)
        preds.append(ridge_predict(r.features, weights, bias))
        nns.append(r.context_nn)
        bounds.append(r.context_bound)
        labels.append(r.shape.label)
    if not ys:
        raise ValueError("no shapes to evaluate CPAC on")
    y = np.stack(ys)
    out = {"probe": summarize(y, np.stack(preds), labels, class_names, tau),
           "constant": summarize(y, np.full_like(y, y_mean), labels, class_names, tau),
           "context_nn": summarize(y, np.stack(nns), labels, class_names, tau),
           "context_bound": summarize(y, np.stack(bounds), labels, class_names, tau)}
    return out, len(ys)


def shapes_from(where: Mapping[str, tuple[str | os.PathLike, int]], labels: Mapping[str, int],
                ids: Sequence[str]) -> list[CpacShape]:
    """CpacShapes of ``ids`` (sorted) from a cache lookup (shape id -> (shard, row)); every id must be cached."""
    missing = sorted(set(ids) - set(where))
    if missing:
        raise ValueError(f"{len(missing)} CPAC shapes are not in the cache (first: {missing[:3]})")
    return [CpacShape(sid, str(Path(where[sid][0])), int(where[sid][1]), int(labels[sid])) for sid in sorted(ids)]
