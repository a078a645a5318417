"""The hand-crafted floor of the few-shot table: shape distributions + logistic regression, (dataset, K, seed) ->
metrics in the fine-tune job's layout (``jobs.finetune.run_with_split``), so the few-shot table reads it as one more
method.

Same protocol as fine-tuning: train on the per-class K-shot subset (K = 0: the ttv train split), choose C on the
few-shot validation role (at most K shapes per class, so no label leak) when it is non-empty, test on the ttv test
split. The descriptors are read from the cached ``pc_xyz`` through ``finetune.backend`` (the view the fine-tuned
classifiers get; a backend that cannot see surface points is refused). One deterministic draw per shape, keyed by
(seed, shape id): ``draws`` is 1 in the report, ``steps`` 0 and ``selected_step`` null (nothing is trained by
steps).

Knobs: ``finetune.descriptor`` (all optional; defaults in ``DEFAULTS``): ``n_points`` 2048, ``bins`` 32,
``n_pairs`` 16384, ``n_triples`` 16384, ``d3`` true (the feature knobs of ``eval.descriptor.shape_distribution``),
``c_grid`` [0.1, 1, 10, 100] (C candidates chosen on validation), ``default_c`` 1.0 (C without validation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data.selection import cached_rows
from ..eval import descriptor
from ..eval.classification import classification_report
from . import finetune

DEFAULTS: dict[str, Any] = {**descriptor.DEFAULTS, "c_grid": list(descriptor.C_GRID), "default_c": descriptor.DEFAULT_C}


def settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """``finetune.descriptor`` with the defaults filled in (unknown keys are an error)."""
    knobs = dict(params["finetune"].get("descriptor") or {})
    unknown = sorted(set(knobs) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"finetune.descriptor: unknown key(s) {unknown} (expected some of {sorted(DEFAULTS)})")
    return {**DEFAULTS, **knobs}


def run(params: Mapping[str, Any], files: Mapping[str, Any], *, log: logging.Logger) -> dict[str, Any]:
    """The descriptor floor on the per-class K-shot split of ``params`` (files: manifest, ttv, fewshot, index,
    shards)."""
    return run_with_split(
        params, files, finetune.fewshot_split(params, files), finetune.class_names(files["manifest"]), log=log
    )


def run_with_split(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    labels: Mapping[str, Mapping[str, int]],
    names: list[str],
    *,
    log: logging.Logger,
) -> dict[str, Any]:
    """Fit on ``labels["train"]``, choose C on ``labels["val"]`` (may be empty), test on ``labels["test"]``.

    ``labels`` maps role -> {shape id: label in 0..len(names)-1}; ``params`` holds ``finetune`` (``backend``,
    optional ``descriptor``), ``seed``, ``k``, ``method``, ``dataset`` (optional ``key`` naming the job in logs).
    """
    ft, seed, k, method = params["finetune"], int(params["seed"]), int(params["k"]), params["method"]
    key = params.get("key") or f"{params['dataset']}|{method}|k{k}|s{seed}"
    opts = settings(params)
    feature_knobs = {name: opts[name] for name in descriptor.DEFAULTS}
    split = {
        role: cached_rows(dict(labels.get(role, {})), files["index"], files["shards"])
        for role in ("train", "val", "test")
    }
    if not split["train"] or not split["test"]:
        raise ValueError(f"{key}: empty train ({len(split['train'])}) or test ({len(split['test'])}) set")
    log.info(
        "%s: train %d, val %d, test %d shapes, %d classes",
        key,
        *(len(split[r]) for r in ("train", "val", "test")),
        len(names),
    )
    backend = ft["backend"]
    x = {
        role: descriptor.descriptor_features(rows, seed=seed, backend=backend, knobs=feature_knobs)
        for role, rows in split.items()
    }
    y = {role: np.array([r.label for r in rows], dtype=np.int64) for role, rows in split.items()}
    n_classes = len(names)
    select = len(split["val"]) > 0
    chosen: dict[str, Any] = {"C": float(opts["default_c"])}
    if select:
        c, scores = descriptor.select_c(
            x["train"], y["train"], x["val"], y["val"], n_classes=n_classes, seed=seed, c_grid=opts["c_grid"]
        )
        chosen = {"C": c, "val_accuracy": scores}
        log.info("%s: C = %g chosen on %d validation shapes (accuracy per C: %s)", key, c, len(y["val"]), scores)
    probs = descriptor.fit_predict(x["train"], y["train"], x["test"], n_classes=n_classes, seed=seed, c=chosen["C"])
    test = classification_report(probs[:, None, :], y["test"], names)
    log.info("%s: test accuracy %.4f (mean class accuracy %.4f)", key, test["accuracy"], test["mean_class_accuracy"])
    metrics = {
        "dataset": params["dataset"],
        "method": method,
        "k": k,
        "seed": seed,
        "backend": backend,
        "class_names": names,
        "selection": "val" if select else "fixed",
        "selected_step": None,
        "steps": 0,
        "train_shapes": len(split["train"]),
        "val_shapes": len(split["val"]),
        "test": test,
        "descriptor": {**opts, **chosen, "features": int(x["train"].shape[1])},
    }
    if select:
        metrics["val_best_accuracy"] = max(chosen["val_accuracy"].values())
    return metrics
