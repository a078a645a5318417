"""A hand-crafted floor: shape distributions (Osada et al. 2002) of cached surface points + a linear classifier.

No learned weights: a learned encoder that does not beat this has not learned much. Per shape, from ``pc_xyz``
(centred on the centroid and divided by the RMS radius, so translation, rotation and uniform scale drop out):

- D2: histogram of the distances between random point pairs, over [0, ``D2_MAX``];
- A3: histogram of the angle at the middle point of random triples, over [0, pi];
- D3: histogram of the square root of the area of random triangles (same triples), over [0, ``D3_MAX``];
- radial: histogram of the distance of every (subsampled) point to the centroid, over [0, ``RADIAL_MAX``];
- the covariance eigenvalues sorted (largest first) and divided by their sum, plus l2/l1 and l3/l1.

Values past a histogram's upper end count in its last bin; every histogram sums to 1 (an empty one, e.g. A3 of a
shape whose points all coincide, is all zeros). Every random draw (subsample, pairs, triples) comes from the rng the
caller passes, which ``descriptor_features`` keys by (seed, "descriptor", shape id): the draws do not depend on the
point coordinates, so a rigidly moved and rescaled copy of a cloud gets the same draws and (up to rounding) the same
vector.

The classifier (``fit_predict``) standardises with the train mean/std and fits an L2 multinomial logistic
regression (lbfgs); its C is chosen on the validation set when there is one (highest validation accuracy; ties ->
the smaller C, i.e. the stronger regularisation, the safer choice with a handful of labels), else ``DEFAULT_C``.
Test labels are never passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..data.selection import CacheRow
from ..rng import rng_for
from ..shape_distributions import D2_MAX, D3_MAX, RADIAL_MAX
from ..tokens.backends import get_backend

STAGE = "descriptor"
# The knobs of ``shape_distribution`` (and the ``finetune.descriptor`` config section) with their defaults.
DEFAULTS: dict[str, Any] = {"n_points": 2048, "bins": 32, "n_pairs": 16384, "n_triples": 16384, "d3": True}
C_GRID = (0.1, 1.0, 10.0, 100.0)  # 0.01 lost 5-10 points at every K on SHREC'07
DEFAULT_C = 1.0
MAX_ITER = 5000


def _histogram(values: np.ndarray, hi: float, bins: int) -> np.ndarray:
    """Normalised histogram over [0, hi]; values past ``hi`` land in the last bin (all zeros when empty)."""
    counts = np.bincount(np.minimum((values * (bins / hi)).astype(np.int64), bins - 1), minlength=bins)
    return counts / max(int(counts.sum()), 1)


def _distinct_triples(rng: np.random.Generator, m: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` index triples (a, b, c) of three distinct indices in [0, m), uniformly drawn."""
    a = rng.integers(0, m, size=n)
    b = (a + 1 + rng.integers(0, m - 1, size=n)) % m
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    c = rng.integers(0, m - 2, size=n)
    c = c + (c >= lo)
    c = c + (c >= hi)
    return a, b, c


def _eigen_ratios(centred: np.ndarray) -> np.ndarray:
    """Covariance eigenvalues (largest first) over their sum, then l2/l1 and l3/l1 (all in [0, 1])."""
    eig = np.sort(np.linalg.eigvalsh(centred.T @ centred / len(centred)))[::-1].clip(min=0.0)
    total = eig.sum()
    if total <= 0.0:
        return np.array([1 / 3, 1 / 3, 1 / 3, 1.0, 1.0])
    return np.concatenate([eig / total, eig[1:] / eig[0]])


def shape_distribution(
    points: np.ndarray,
    rng: np.random.Generator,
    *,
    n_points: int = DEFAULTS["n_points"],
    bins: int = DEFAULTS["bins"],
    n_pairs: int = DEFAULTS["n_pairs"],
    n_triples: int = DEFAULTS["n_triples"],
    d3: bool = DEFAULTS["d3"],
) -> np.ndarray:
    """The descriptor of one point cloud: [D2, A3, (D3,) radial histograms, eigenvalue ratios] as float32.

    ``n_points``: a random subsample of at most that many points (0: all); the length is ``(3 + d3) * bins + 5``.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 3:
        raise ValueError(f"need an (N >= 3, 3) point array, got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError("points contain NaN or infinite values")
    if bins < 1 or n_pairs < 1 or n_triples < 1 or (0 < n_points < 3) or n_points < 0:
        raise ValueError(
            f"need bins, n_pairs, n_triples >= 1 and n_points 0 or >= 3 (got {bins}, {n_pairs}, "
            f"{n_triples}, {n_points})"
        )
    if 0 < n_points < len(pts):
        pts = pts[np.sort(rng.choice(len(pts), size=n_points, replace=False))]
    m = len(pts)
    centred = pts - pts.mean(axis=0)
    radius = np.linalg.norm(centred, axis=1)
    rms = float(np.sqrt(np.mean(radius**2)))
    scale = 1.0 / rms if rms > 0.0 else 0.0  # all points coincide: every distance is 0
    q = centred * scale

    i = rng.integers(0, m, size=n_pairs)
    j = (i + 1 + rng.integers(0, m - 1, size=n_pairs)) % m
    d2 = np.linalg.norm(q[i] - q[j], axis=1)

    a, b, c = _distinct_triples(rng, m, n_triples)
    u, v = q[a] - q[b], q[c] - q[b]
    norms = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    valid = norms > 0.0  # coincident points (duplicates) have no angle
    cos = np.clip(np.einsum("ij,ij->i", u[valid], v[valid]) / norms[valid], -1.0, 1.0)
    parts = [_histogram(d2, D2_MAX, bins), _histogram(np.arccos(cos), np.pi, bins)]
    if d3:
        area = 0.5 * np.linalg.norm(np.cross(u, v), axis=1)
        parts.append(_histogram(np.sqrt(area), D3_MAX, bins))
    parts += [_histogram(radius * scale, RADIAL_MAX, bins), _eigen_ratios(q)]
    return np.concatenate(parts).astype(np.float32)


def feature_length(*, bins: int = DEFAULTS["bins"], d3: bool = DEFAULTS["d3"], **_: Any) -> int:
    return (3 + int(bool(d3))) * int(bins) + 5


def settings(knobs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The descriptor knobs with the defaults filled in (unknown keys are an error: a typo must not pass)."""
    knobs = dict(knobs or {})
    unknown = sorted(set(knobs) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown descriptor setting(s) {unknown} (expected some of {sorted(DEFAULTS)})")
    return {**DEFAULTS, **knobs}


def descriptor_features(
    rows: Sequence[CacheRow], *, seed: int, backend: str = "pointcloud_noray", knobs: Mapping[str, Any] | None = None
) -> np.ndarray:
    """(N, F) float32 descriptors of cached shapes, in ``rows`` order, from their ``pc_xyz`` read through
    ``backend`` (so a backend whose primitive cannot see the surface points is refused). Each shape's draws come
    from ``rng_for(seed, "descriptor", shape id)``: its vector does not depend on which other shapes are read."""
    opts = settings(knobs)
    view = get_backend(backend)
    out = np.zeros((len(rows), feature_length(**opts)), dtype=np.float32)
    by_shard: dict[str, list[int]] = {}
    for n, r in enumerate(rows):
        by_shard.setdefault(r.shard_path, []).append(n)
    for path in sorted(by_shard):  # each shard opened once
        reader = view.open(path)
        try:
            for n in by_shard[path]:
                xyz = view.read(reader, rows[n].row, ["pc_xyz"])["pc_xyz"]
                out[n] = shape_distribution(xyz, rng_for(seed, STAGE, rows[n].shape_id), **opts)
        finally:
            reader.close()
    return out


# ---- linear classifier ------------------------------------------------------------------------------------------


def standardiser(train_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the training features; a constant feature gets std 1 (it stays constant, i.e. 0)."""
    x = np.asarray(train_x, dtype=np.float64)
    std = x.std(axis=0)
    return x.mean(axis=0), np.where(std > 1e-12, std, 1.0)


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    """One BLAS thread: the problem is tiny, and threads fighting over busy cores made a fit 15x slower (and
    a threaded reduction order is not bit-stable)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER, tol=1e-6, random_state=seed).fit(x, y)


def _probabilities(model, x: np.ndarray, present: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) probabilities; classes absent from training get 0."""
    out = np.zeros((len(x), n_classes))
    if model is None:  # a single training class: it is every prediction
        out[:, present[0]] = 1.0
    else:
        out[:, model.classes_] = model.predict_proba(x)
    return out


def _scaler(train_x: np.ndarray):
    mean, std = standardiser(train_x)
    return lambda x: (np.asarray(x, dtype=np.float64) - mean) / std


def _check_labels(train_x: np.ndarray, train_y: np.ndarray, n_classes: int) -> np.ndarray:
    train_y = np.asarray(train_y, dtype=np.int64)
    if len(train_y) == 0 or len(train_y) != len(train_x):
        raise ValueError(
            f"need a non-empty training set with one label per row ({len(train_x)} rows, {len(train_y)} labels)"
        )
    if train_y.min() < 0 or train_y.max() >= n_classes:
        raise ValueError(f"training labels must lie in [0, {n_classes}), got {train_y.min()}..{train_y.max()}")
    return train_y


def _train_predict(xt: np.ndarray, yt: np.ndarray, x: np.ndarray, c: float, n_classes: int, seed: int) -> np.ndarray:
    """Probabilities on standardised ``x`` of a model fitted on standardised ``xt``."""
    present = np.unique(yt)
    model = _fit(xt, yt, c, seed) if len(present) > 1 else None
    return _probabilities(model, x, present, n_classes)


def select_c(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    n_classes: int,
    seed: int = 0,
    c_grid: Sequence[float] = C_GRID,
) -> tuple[float, dict[str, float]]:
    """The C of ``c_grid`` with the highest validation accuracy (ties -> the smaller C), and every C's accuracy.

    Only the validation labels are read; with a single training class every C predicts the same, so the smallest
    one is returned.
    """
    train_y = _check_labels(train_x, train_y, n_classes)
    val_y = np.asarray(val_y, dtype=np.int64)
    if len(val_y) == 0 or len(val_y) != len(val_x):
        raise ValueError(
            f"need a non-empty validation set with one label per row ({len(val_x)} rows, {len(val_y)} labels)"
        )
    scaled = _scaler(train_x)
    xt, xv = scaled(train_x), scaled(val_x)
    scores = {
        c: float((_train_predict(xt, train_y, xv, c, n_classes, seed).argmax(axis=1) == val_y).mean())
        for c in sorted(float(c) for c in c_grid)
    }
    best = max(scores.values())
    return min(c for c, s in scores.items() if s == best), {str(c): s for c, s in scores.items()}


def fit_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    n_classes: int,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    seed: int = 0,
    c: float | None = None,
    c_grid: Sequence[float] = C_GRID,
) -> np.ndarray:
    """(N_test, n_classes) probabilities of a logistic regression fitted on (train_x, train_y).

    C: ``c`` when given; else chosen by ``select_c`` on (val_x, val_y) when that set is non-empty; else
    ``DEFAULT_C``. Features are standardised with the train mean/std. Labels lie in [0, n_classes); classes absent
    from training get probability 0 (with one training class, it gets probability 1 everywhere).
    """
    train_y = _check_labels(train_x, train_y, n_classes)
    if c is None:
        has_val = val_x is not None and val_y is not None and len(val_y) > 0
        c = (
            select_c(train_x, train_y, val_x, val_y, n_classes=n_classes, seed=seed, c_grid=c_grid)[0]
            if has_val
            else DEFAULT_C
        )
    scaled = _scaler(train_x)
    return _train_predict(scaled(train_x), train_y, scaled(test_x), float(c), n_classes, seed)
