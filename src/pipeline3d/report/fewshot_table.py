"""The few-shot table: test accuracy mean ± std over seeds per (method, K), from the fine-tune metrics JSONs.

Layout of the seed table: Method | K | n(seed) | test_acc mean ± std (+ mean class accuracy), then a readout of
the best method per K. Only the metrics files are read (never checkpoints), and the output depends only on
their results, so rerunning with identical metrics gives byte-identical tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .collect import dig, identity, number, read_metrics

REQUIRED = ("method", "k", "seed", "test")


def read_checked(path: Path, required: Sequence[str], what: str, *, require_dataset: bool = False) -> tuple[dict, str]:
    """(metrics, dataset) of one job's metrics JSON; missing ``required`` keys are an error naming the file, and the
    dataset is "" when unnamed (unless ``require_dataset``)."""
    metrics = read_metrics(path)
    missing = [key for key in required if key not in metrics]
    if missing:
        raise ValueError(f"{path}: {what} metrics lack {missing}")
    try:
        return metrics, identity(metrics, path, "dataset")
    except ValueError:
        if require_dataset:
            raise
        return metrics, ""


def load_rows(paths: Sequence[str | Path], require_dataset: bool = False) -> pd.DataFrame:
    """One row per fine-tune metrics file: dataset ("" when unnamed, unless required), method, k, seed, accuracies."""
    rows = []
    for path in map(Path, paths):
        metrics, dataset = read_checked(path, REQUIRED, "fine-tune", require_dataset=require_dataset)
        rows.append(
            {
                "dataset": dataset,
                "method": str(metrics["method"]),
                "k": int(metrics["k"]),
                "seed": int(metrics["seed"]),
                **accuracies(metrics, path),
            }
        )
    return pd.DataFrame(rows, columns=["dataset", "method", "k", "seed", "test_acc", "test_macc"])


def accuracies(metrics: dict, path: str | Path) -> dict[str, float]:
    """test_acc and test_macc of a classification metrics JSON (shared with the episode table)."""
    return {
        "test_acc": number(dig(metrics, path, "test", "accuracy"), path, "test.accuracy"),
        "test_macc": number(dig(metrics, path, "test", "mean_class_accuracy"), path, "test.mean_class_accuracy"),
    }


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize(rows: pd.DataFrame, method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (method, K): n_seed, mean and sample std (ddof=1; 0 with one seed) of test accuracies."""
    table = aggregate(rows, ["method", "k"], "seed")
    table["_m"] = method_rank(table["method"], method_order)
    table["_k"] = full_last(table["k"])  # K ascending, the full train split (K = 0) last, as the report's table
    return table.sort_values(["_k", "_m"]).drop(columns=["_k", "_m"]).reset_index(drop=True)


def aggregate(rows: pd.DataFrame, keys: list[str], unit: str) -> pd.DataFrame:
    """Per ``keys`` (first-seen order): n_<unit> (distinct units, e.g. seeds or folds), mean and sample std of
    test_acc and test_macc (ddof=1; 0 with one unit)."""
    grouped = rows.groupby(keys, sort=False)
    return grouped.agg(
        **{f"n_{unit}": (unit, "nunique")},
        acc_mean=("test_acc", "mean"),
        acc_std=("test_acc", _std),
        macc_mean=("test_macc", "mean"),
        macc_std=("test_macc", _std),
    ).reset_index()


def method_rank(methods: pd.Series, method_order: Sequence[str] | None = None) -> pd.Series:
    """Sort key of methods: the given (config) order, else alphabetical."""
    order = list(method_order) if method_order else sorted(methods.unique())
    return methods.map({m: i for i, m in enumerate(order)})


def pm(mean: float, std: float) -> str:
    """A mean ± std cell, as every classification table prints it."""
    return f"{mean:.4f} ± {std:.4f}"


def full_last(k: pd.Series) -> pd.Series:
    """Sort key for K: the K-shot budgets ascending, then K = 0 (the full train split)."""
    return k.where(k != 0, np.iinfo(np.int64).max)


def best_per_k(table: pd.DataFrame) -> pd.DataFrame:
    """The method with the highest mean accuracy per K (ties: the first in table order)."""
    idx = table.groupby("k", sort=False)["acc_mean"].idxmax()
    best = table.loc[idx, ["k", "method", "acc_mean", "acc_std"]]
    return best.iloc[np.argsort(full_last(best["k"]).to_numpy(), kind="stable")].reset_index(drop=True)


def _k_label(k: int) -> str:
    return "full" if k == 0 else str(k)


def to_markdown(table: pd.DataFrame, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "| Method | K | n(seed) | test_acc mean ± std | test mAcc mean ± std |",
        "|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.method} | {_k_label(r.k)} | {r.n_seed} | {pm(r.acc_mean, r.acc_std)} | "
            f"{pm(r.macc_mean, r.macc_std)} |"
        )
    lines += ["", "Best method per K (mean test accuracy):", ""]
    for r in best_per_k(table).itertuples():
        lines.append(f"- K={_k_label(r.k)}: **{r.method}** {pm(r.acc_mean, r.acc_std)}")
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, float_format="%.6f", lineterminator="\n")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0
