"""CPAC-UDF: a completion probe. From a context of points with distances, predict the exact distance elsewhere.

Per shape, ``n_context + n_query`` DISJOINT indices are drawn from the shape's query pool in one draw (keyed by
seed, role and shape id via ``pipeline3d.rng``). The context points carry the distance their backend knows
(``pool_dist_pc`` for point clouds, ``pool_dist_grid`` for the UDF grid ...), read through ``backend.open`` so a
context can never reach another primitive's arrays. The target is the EXACT mesh distance ``pool_dist_mesh`` at
the query points, read by a separate mesh-restricted reader: ground truth for evaluation, never model input (the
reference regressed the coarse, biased UDF grid; nepa3d-spec §1.6, §10 item 6).

This module: the probe's maths (ridge head, metrics, shape selection). The token sequence is
``eval.cpac_sequence``, reading shapes ``eval.cpac_shapes``, the encoder pass ``eval.cpac_features``.

Ridge head: closed form in float64 on the normal equations ``(AᵀA + λ·D) β = Aᵀy`` with ``A = [X, 1]`` and D the
identity without the bias entry (the bias is not penalised; this is sklearn's ``Ridge(fit_intercept=True)``),
solved with ``np.linalg.solve``. AᵀA is accumulated shape by shape in a fixed order, so the head does not depend on
the batch size and never holds all features in memory.

Metrics (``summarize``): MAE, RMSE, bias and IoU@τ = |{y ≤ τ} ∩ {ŷ ≤ τ}| / |{y ≤ τ} ∪ {ŷ ≤ τ}|, pooled over all
query points, pooled within each class, and per shape (mean ± std over shapes; a shape whose union is empty has
no IoU and is left out of the IoU mean, its count is reported).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..rng import stable_hash

if TYPE_CHECKING:
    from .cpac_features import ShapeResult

STAGE = "eval_cpac"
TARGET_KEY = "pool_dist_mesh"
TARGET_PRIMITIVE = "mesh"
ROLES = ("head", "test")
LEGACY_CAVEAT = (
    "legacy tokens have no query-only type: each query is a POINT token with its distance slot set to "
    "0, which the model reads as an on-surface point"
)


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
            raise ValueError(
                f"ridge: singular normal equations ({self.n} points, {self.dim} features, "
                f"lambda {lam}); use a positive ridge_lambda"
            ) from exc
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
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "bias": float(err.mean()),
        "iou": iou_at(y, yhat, tau),
        "n_points": int(y.size),
    }


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def summarize(
    y: np.ndarray, yhat: np.ndarray, labels: Sequence[int], class_names: Mapping[int, str], tau: float
) -> dict[str, Any]:
    """Metrics of (S, Q) targets / predictions of S shapes (labels: one per shape).

    ``pooled``: over all points; ``per_class``: class name -> pooled within the class (+ n_shapes);
    ``per_shape``: mean and std (population) over shapes of each shape's own MAE / RMSE / bias / IoU.
    """
    y, yhat = np.asarray(y, dtype=np.float64), np.asarray(yhat, dtype=np.float64)
    labels = np.asarray(labels)
    if y.ndim != 2 or y.shape != yhat.shape or len(labels) != len(y):
        raise ValueError(
            f"summarize: need (S, Q) targets and predictions and S labels (got {y.shape}, {yhat.shape}, {labels.shape})"
        )
    per_class = {}
    for label in sorted(set(labels.tolist())):
        mask = labels == label
        name = str(class_names.get(int(label), label))
        per_class[name] = point_metrics(y[mask], yhat[mask], tau) | {"n_shapes": int(mask.sum())}
    shapes = [point_metrics(y[s], yhat[s], tau) for s in range(len(y))]
    per_shape = {
        key: _mean_std([m[key] for m in shapes if m[key] is not None]) for key in ("mae", "rmse", "bias", "iou")
    }
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


# -- the probe over streamed shapes ---------------------------------------------------------------------------------


def fit_head(results: Iterable[ShapeResult], lam: float) -> tuple[np.ndarray, float, float, int]:
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


def evaluate(
    results: Iterable[ShapeResult],
    weights: np.ndarray,
    bias: float,
    y_mean: float,
    class_names: Mapping[int, str],
    tau: float,
) -> tuple[dict[str, Any], int]:
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
    out = {
        "probe": summarize(y, np.stack(preds), labels, class_names, tau),
        "constant": summarize(y, np.full_like(y, y_mean), labels, class_names, tau),
        "context_nn": summarize(y, np.stack(nns), labels, class_names, tau),
        "context_bound": summarize(y, np.stack(bounds), labels, class_names, tau),
    }
    return out, len(ys)
