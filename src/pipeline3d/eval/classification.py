"""Classification metrics over Monte-Carlo token draws.

A shape is evaluated on several independent token draws (deterministic per shape id); its logits are averaged
over the draws before the arg-max, as in the reference's ``mc_eval_k``.
"""

from __future__ import annotations

import numpy as np


def average_draws(logits: np.ndarray) -> np.ndarray:
    """(N, D, C) logits of D draws per shape -> (N, C) mean logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3:
        raise ValueError(f"expected (shapes, draws, classes) logits, got shape {logits.shape}")
    return logits.mean(axis=1)


def accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape or pred.size == 0:
        raise ValueError(f"need equal, non-empty prediction and label arrays (got {pred.shape} and {label.shape})")
    return float((pred == label).mean())


def per_class_accuracy(pred: np.ndarray, label: np.ndarray, names: list[str]) -> dict[str, float | None]:
    """Class name -> accuracy over that class's shapes (None for a class without test shapes)."""
    pred, label = np.asarray(pred), np.asarray(label)
    out: dict[str, float | None] = {}
    for c, name in enumerate(names):
        mask = label == c
        out[name] = float((pred[mask] == c).mean()) if mask.any() else None
    return out


def mean_class_accuracy(per_class: dict[str, float | None]) -> float:
    """The mean of the per-class accuracies over classes that have shapes (ScanObjectNN's 'mAcc')."""
    values = [v for v in per_class.values() if v is not None]
    return float(np.mean(values)) if values else float("nan")


def classification_report(logits: np.ndarray, label: np.ndarray, names: list[str]) -> dict:
    """accuracy, mean class accuracy and per-class accuracy from (N, D, C) draw logits."""
    pred = average_draws(logits).argmax(axis=1)
    per_class = per_class_accuracy(pred, label, names)
    return {
        "accuracy": accuracy(pred, label),
        "mean_class_accuracy": mean_class_accuracy(per_class),
        "per_class_accuracy": per_class,
        "n": int(len(label)),
        "draws": int(np.asarray(logits).shape[1]),
    }
