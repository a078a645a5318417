"""The N-way K-shot episode table: test accuracy mean ± std over folds per (method, setting), the field's few-shot
protocol (see data.splits.episodes).

Layout: Method | Setting | n(fold) | test_acc mean ± std | test mAcc mean ± std | query/class (min–max), then the
settings the dataset could not fill and the best method per setting. The std is the sample std (ddof=1) over folds,
as the field reports it, with n(fold) beside it so a partial grid is visible. The query column exists because the
protocol's 20 query shapes per class are not always there: a class with fewer test groups gets fewer.
Only the metrics files are read, rows are sorted before any sum, so identical metrics give byte-identical tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..data.splits.episodes import parse_setting
from .collect import dig
from .fewshot_table import accuracies, aggregate, method_rank, pm, read_checked, to_csv

REQUIRED = ("method", "setting", "fold")
COLUMNS = [
    "dataset",
    "method",
    "setting",
    "way",
    "shot",
    "fold",
    "test_acc",
    "test_macc",
    "query_min",
    "query_max",
    "query_target",
    "skipped",
]
TABLE_COLUMNS = [
    "method",
    "setting",
    "way",
    "shot",
    "n_fold",
    "acc_mean",
    "acc_std",
    "macc_mean",
    "macc_std",
    "query_min",
    "query_max",
    "skipped",
]


def _row(path: Path) -> dict:
    metrics, dataset = read_checked(path, REQUIRED, "episode")
    way, shot = parse_setting(metrics["setting"])
    row = {
        "dataset": dataset,
        "method": str(metrics["method"]),
        "setting": str(metrics["setting"]),
        "way": way,
        "shot": shot,
        "fold": int(metrics["fold"]),
        "skipped": str(metrics.get("skipped") or ""),
    }
    if row["skipped"]:
        return row
    query = dig(metrics, path, "query_per_class")
    return (
        row
        | accuracies(metrics, path)
        | {
            "query_min": int(dig(query, path, "min")),
            "query_max": int(dig(query, path, "max")),
            "query_target": query.get("target"),
        }
    )


def load_rows(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per episode metrics file, sorted by (method, setting, fold); a skipped setting has only ``skipped``."""
    rows = pd.DataFrame([_row(Path(p)) for p in paths], columns=COLUMNS)
    return rows.sort_values(["method", "way", "shot", "fold"], kind="stable").reset_index(drop=True)


def summarize(rows: pd.DataFrame, method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (method, setting): n_fold, mean and sample std of the accuracies, the query range per class;
    skipped settings as rows with n_fold 0 and the reason. Settings by (N, K), then methods in config order."""
    done, skipped = rows[rows["skipped"] == ""], rows[rows["skipped"] != ""]
    both = set(zip(done["method"], done["setting"])) & set(zip(skipped["method"], skipped["setting"]))
    if both:
        raise ValueError(f"episode metrics both ran and skipped {sorted(both)}: they come from different splits")
    table = aggregate(done, ["method", "setting"], "fold")
    query = (
        done.groupby(["method", "setting"], sort=False)
        .agg(query_min=("query_min", "min"), query_max=("query_max", "max"))
        .reset_index()
    )
    table = table.merge(query, on=["method", "setting"], how="left").assign(skipped="")
    gone = skipped.drop_duplicates(["method", "setting"])[["method", "setting", "skipped"]].assign(n_fold=0)
    table = pd.concat([table, gone], ignore_index=True) if len(gone) else table
    parsed = [parse_setting(s) for s in table["setting"]]
    table["way"], table["shot"] = [w for w, _ in parsed], [k for _, k in parsed]
    table = table.astype({"n_fold": "int64", "query_min": "Int64", "query_max": "Int64"})
    table["_m"] = method_rank(table["method"], method_order)
    return table.sort_values(["way", "shot", "_m"], kind="stable")[TABLE_COLUMNS].reset_index(drop=True)


def query_target(rows: pd.DataFrame) -> int | None:
    """The protocol's query shapes per class (from the split metadata the jobs copied), None when unknown."""
    targets = pd.to_numeric(rows["query_target"], errors="coerce").dropna()
    return int(targets.max()) if len(targets) else None


def best_per_setting(table: pd.DataFrame) -> pd.DataFrame:
    """The method with the highest mean accuracy per setting (ties: the first in table order)."""
    done = table[table["skipped"] == ""]
    return done.loc[done.groupby("setting", sort=False)["acc_mean"].idxmax()].reset_index(drop=True)


def to_markdown(table: pd.DataFrame, title: str, target: int | None = None) -> str:
    lines = [
        f"# {title}",
        "",
        "| Method | Setting | n(fold) | test_acc mean ± std | test mAcc mean ± std | query/class |",
        "|---|---|---|---|---|---|",
    ]
    done = table[table["skipped"] == ""]
    for r in done.itertuples():
        lines.append(
            f"| {r.method} | {r.setting} | {r.n_fold} | {pm(r.acc_mean, r.acc_std)} | "
            f"{pm(r.macc_mean, r.macc_std)} | {r.query_min}–{r.query_max} |"
        )
    if target and len(done) and int(done["query_min"].min()) < target:
        lines += [
            "",
            f"Query shapes per class: the protocol asks for {target}; classes whose test split holds fewer "
            "groups get fewer (the query/class column gives the range over each setting's folds).",
        ]
    gone = table[table["skipped"] != ""].drop_duplicates("setting")
    if len(gone):
        lines += ["", "Settings this dataset cannot fill (skipped):", ""]
        lines += [f"- {r.setting}: {r.skipped}" for r in gone.itertuples()]
    lines += ["", "Best method per setting (mean test accuracy over folds):", ""]
    for r in best_per_setting(table).itertuples():
        lines.append(f"- {r.setting}: **{r.method}** {pm(r.acc_mean, r.acc_std)} (n(fold)={r.n_fold})")
    return "\n".join(lines) + "\n"


__all__ = ["best_per_setting", "load_rows", "query_target", "summarize", "to_csv", "to_markdown"]
