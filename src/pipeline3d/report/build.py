"""The paper tables (fewshot, ucpr, cpac, retrieval, text3d), summary.md and plots from the metrics JSONs.

Conventions shared by every table (documented in summary.md too):
- numbers have ``tables.DECIMALS`` (3) decimals in markdown/LaTeX and 6 in the CSV;
- "mean ± std" is the mean and the SAMPLE std (ddof=1) over seeds (few-shot) or query/gallery splits (retrieval),
  with the count in an "n(...)" column; with a single run the std is undefined and shows as "± -";
- rows are sorted by a fixed key (below), never by file order, and nothing time-dependent is written, so the
  same metrics give byte-identical files.

Sort keys: fewshot: dataset, K ascending with "full" (K=0) last, then the method in finetune.methods order (others
alphabetically after it); ucpr: dataset, method, query, gallery, then ablation "none" first, other ablations
alphabetically, "chance" last; cpac: dataset, method, context, then the encoder's ridge probe first and the
baselines by name; retrieval: dataset, head kind, model, then embedding (head, head pre-BN, raw); text3d:
dataset, method, direction (text -> mesh first).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..io.atomic import write_bytes, write_text
from . import collect, plots
from .fewshot_table import best_per_k, load_rows, summarize
from .tables import Column, MeanStd, Table, fmt_float

TABLE_NAMES = ("fewshot", "ucpr", "cpac", "retrieval", "text3d")
PLOT_NAMES = ("fewshot_accuracy", "recall_at_k")
INPUT_NAMES = ("finetune", "ucpr", "cpac", "metric_heads", "retrieval_heads", "promptsg", "align")


def _k_label(k: int) -> str:
    return plots.k_label(k)


def _mean_std(mean: float, std: float, n: int) -> MeanStd:
    return MeanStd(float(mean), float(std) if n > 1 else None, int(n))


def _method_rank(order: Sequence[str]):
    pos = {m: i for i, m in enumerate(order)}
    return lambda m: (pos.get(m, len(pos)), m)


# ------------------------------------------------------------------------------------------------- few-shot
def fewshot_summary(rows: pd.DataFrame, method_order: Sequence[str]) -> pd.DataFrame:
    """fewshot_table.summarize per dataset, sorted by the documented key; an (dataset, method, K, seed) twice is
    an error (its accuracy would be counted twice in the mean)."""
    dup = rows[rows.duplicated(["dataset", "method", "k", "seed"], keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise ValueError(
            f"fine-tune metrics: {len(dup)} files share a job, e.g. dataset {r.dataset!r} method "
            f"{r.method!r} K={r.k} seed {r.seed}"
        )
    parts = [
        summarize(rows[rows["dataset"] == ds], method_order).assign(dataset=ds)
        for ds in sorted(rows["dataset"].unique())
    ]
    columns = ["dataset", "method", "k", "n_seed", "acc_mean", "acc_std", "macc_mean", "macc_std"]
    if not parts:
        return pd.DataFrame(columns=columns)
    table = pd.concat(parts, ignore_index=True)[columns]
    rank = _method_rank(method_order)
    keys = [(ds, k == 0, k, rank(m)) for ds, k, m in zip(table["dataset"], table["k"], table["method"])]
    order = sorted(range(len(table)), key=lambda i: keys[i])
    return table.iloc[order].reset_index(drop=True)


def fewshot_table(summary: pd.DataFrame, finetune_cfg: Mapping[str, Any], rows: pd.DataFrame) -> Table:
    table = Table(
        "fewshot",
        "Few-shot classification",
        [
            Column("method", "Method"),
            Column("k", "K", "r"),
            Column("n_seed", "n(seed)", "r"),
            Column("test_acc", "test_acc mean ± std", "r", mean_std=True),
            Column("test_mean_class_acc", "mean class acc mean ± std", "r", mean_std=True),
        ],
        group_key="dataset",
    )
    for r in summary.itertuples():
        table.add(
            [
                r.method,
                _k_label(r.k),
                int(r.n_seed),
                _mean_std(r.acc_mean, r.acc_std, r.n_seed),
                _mean_std(r.macc_mean, r.macc_std, r.n_seed),
            ],
            group=r.dataset,
        )
    for dataset in table.groups:
        part = summary[summary["dataset"] == dataset]
        best = best_per_k(part)  # part is in table order, so a tie goes to the method listed first
        notes = ["Best method per K (highest mean test accuracy; ties: the first in table order):", ""]
        for b in best.itertuples():  # K ascending, full last
            n = int(part[(part["k"] == b.k) & (part["method"] == b.method)]["n_seed"].iloc[0])
            std = fmt_float(b.acc_std) if n > 1 else "-"
            notes.append(f"- K={_k_label(b.k)}: **{b.method}** {fmt_float(b.acc_mean)} ± {std}")
        table.group_notes[dataset] = notes + _missing_jobs(rows[rows["dataset"] == dataset], finetune_cfg)
    expected = [ds for ds in finetune_cfg.get("datasets", []) if ds not in table.groups]
    if expected:
        table.notes.append(f"No fine-tune results for configured dataset(s): {', '.join(sorted(expected))}.")
    return table


def _missing_jobs(rows: pd.DataFrame, cfg: Mapping[str, Any]) -> list[str]:
    """Configured (method, K, seed) jobs without a metrics file: a table over fewer seeds than planned says so."""
    if not all(key in cfg for key in ("methods", "k", "seeds")):
        return []
    have = set(zip(rows["method"], rows["k"].astype(int), rows["seed"].astype(int)))
    missing = [
        (m, int(k), int(s))
        for m in cfg["methods"]
        for k in cfg["k"]
        for s in cfg["seeds"]
        if (m, int(k), int(s)) not in have
    ]
    if not missing:
        return []
    shown = ", ".join(f"{m} K={_k_label(k)} seed {s}" for m, k, s in missing[:10])
    more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
    return ["", f"Missing configured jobs ({len(missing)}): {shown}{more}."]


# ------------------------------------------------------------------------------------------------- UCPR
def _ablation_key(name: str) -> tuple[int, str]:
    return (0 if name == "none" else 2 if name == collect.CHANCE else 1, name)


def ucpr_table(rows: pd.DataFrame) -> Table:
    table = Table(
        "ucpr",
        "UCPR: unpaired cross-primitive retrieval (instance match; MRR = mean 1/rank, tie-aware)",
        [
            Column("method", "Method"),
            Column("pair", "query -> gallery"),
            Column("ablation", "Ablation"),
            Column("n_query", "n(query)", "r"),
            Column("R@1", "R@1", "r"),
            Column("R@5", "R@5", "r"),
            Column("R@10", "R@10", "r"),
            Column("MRR", "MRR", "r"),
            Column("category_mAP", "category mAP", "r"),
        ],
        group_key="dataset",
    )
    keyed = sorted(
        rows.to_dict("records"),
        key=lambda r: (r["dataset"], r["method"], r["query"], r["gallery"], _ablation_key(r["ablation"])),
    )
    _check_unique(keyed, ("dataset", "method", "query", "gallery", "ablation"), "UCPR")
    for r in keyed:
        table.add(
            [
                r["method"],
                f"{r['query']} -> {r['gallery']}",
                r["ablation"],
                _opt(r["n_query"], int),
                r["R@1"],
                r["R@5"],
                r["R@10"],
                r["MRR"],
                _opt(r["category_mAP"], float),
            ],
            group=r["dataset"],
        )
    if table.n_rows:
        table.notes.append('Ablation "chance": the exact expectation of a uniformly random ranking (the floor).')
    return table


def _opt(value: Any, cast):
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else cast(value)


def _check_unique(rows: list[dict], keys: Sequence[str], what: str) -> None:
    seen: set[tuple] = set()
    for r in rows:
        key = tuple(r[k] for k in keys)
        if key in seen:
            raise ValueError(f"{what} metrics: two files report {dict(zip(keys, key))}")
        seen.add(key)


# ------------------------------------------------------------------------------------------------- CPAC
def cpac_table(rows: pd.DataFrame) -> Table:
    taus = sorted({float(t) for t in rows["tau"] if t is not None and not pd.isna(t)})
    iou_header = f"IoU@{fmt_float(taus[0])}" if len(taus) == 1 else "IoU@tau"
    table = Table(
        "cpac",
        "CPAC: completion probe (UDF at query points from a context; pooled over query points)",
        [
            Column("method", "Method"),
            Column("context", "Context"),
            Column("predictor", "Predictor"),
            Column("n_shapes", "n(shape)", "r"),
            Column("MAE", "MAE", "r"),
            Column("RMSE", "RMSE", "r"),
            Column("IoU", iou_header, "r"),
            Column("tau", "tau", "r"),
        ],
        group_key="dataset",
    )
    keyed = sorted(
        rows.to_dict("records"),
        key=lambda r: (
            r["dataset"],
            r["method"],
            r["context"],
            r["predictor"] != collect.MODEL_PREDICTOR,
            r["predictor"],
        ),
    )
    _check_unique(keyed, ("dataset", "method", "context", "predictor"), "CPAC")
    for r in keyed:
        table.add(
            [
                r["method"],
                r["context"],
                r["predictor"],
                _opt(r["n_shapes"], int),
                r["MAE"],
                r["RMSE"],
                _opt(r["IoU"], float),
                _opt(r["tau"], float),
            ],
            group=r["dataset"],
        )
    if table.n_rows:
        table.notes.append(
            f'"{collect.MODEL_PREDICTOR}": the ridge probe on the encoder features at the query '
            'tokens; "baseline: ..." rows are the geometry-only predictors of the same job. IoU "-": '
            "no point within tau in target or prediction."
        )
    return table


# ------------------------------------------------------------------------------------------------- retrieval
_EMBEDDING_ORDER = {
    "metric head": 0,
    "retrieval head": 0,
    "PromptSG": 0,
    "retrieval head (pre-BN)": 1,
    "raw": 2,
    "descriptor (raw)": 3,
}  # the hand-crafted floor last


def retrieval_table(rows: pd.DataFrame) -> Table:
    caption = "Query/gallery retrieval: metric and retrieval heads vs the raw embedding and the descriptor floor"
    table = Table(
        "retrieval",
        caption,
        [
            Column("head", "Head"),
            Column("model", "Model"),
            Column("embedding", "Embedding"),
            Column("n_split", "n(split)", "r"),
            *[Column(m, f"{_pretty(m)} mean ± std", "r", mean_std=True) for m in collect.RETRIEVAL_METRICS],
        ],
        group_key="dataset",
    )
    keyed = sorted(
        rows.to_dict("records"),
        key=lambda r: (r["dataset"], r["head"], r["model"], _EMBEDDING_ORDER.get(r["embedding"], 9), r["embedding"]),
    )
    _check_unique(keyed, ("dataset", "head", "model", "embedding"), "retrieval")
    for r in keyed:
        cells = [MeanStd.of(r[m]) if r[m] else None for m in collect.RETRIEVAL_METRICS]
        table.add([r["head"], r["model"], r["embedding"], int(r["n_split"]), *cells], group=r["dataset"])
    if table.n_rows:
        table.notes.append(
            "Mean ± sample std (ddof=1) over the query/gallery splits (qg.parquet); splits without a "
            "scorable query are left out of n(split)."
        )
    return table


def _pretty(metric: str) -> str:
    return metric.replace("rank@", "Rank@")


# ------------------------------------------------------------------------------------------------- text-3D
def text3d_table(rows: pd.DataFrame) -> Table:
    ks = [c for c in collect.TEXT3D_COLUMNS if c.startswith("R@")]
    table = Table(
        "text3d",
        "Text-3D retrieval (test split, selected fold)",
        [
            Column("method", "Method"),
            Column("direction", "Direction"),
            Column("fold", "fold", "r"),
            *[Column(k, k, "r") for k in ks],
        ],
        group_key="dataset",
    )
    direction_rank = {label: i for i, label in enumerate(collect.TEXT3D_DIRECTIONS.values())}
    keyed = sorted(
        rows.to_dict("records"), key=lambda r: (r["dataset"], r["method"], direction_rank.get(r["direction"], 9))
    )
    _check_unique(keyed, ("dataset", "method", "direction"), "text-3D")
    for r in keyed:
        table.add([r["method"], r["direction"], r["fold"], *[r[k] for k in ks]], group=r["dataset"])
    return table


# ------------------------------------------------------------------------------------------------- all
@dataclass
class Report:
    tables: dict[str, Table]
    plots: dict[str, bytes]
    counts: dict[str, int]  # input files per input name


def _paths(inputs: Mapping[str, Any], name: str) -> list[str]:
    value = inputs.get(name, [])
    paths = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(p, str) for p in paths):
        raise ValueError(f"--inputs {name!r} must be a path or a list of paths, got {value!r}")
    return sorted(paths)  # file order never matters: rows are sorted by key, and this makes logs stable


def build(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> Report:
    unknown = sorted(set(inputs) - set(INPUT_NAMES))
    if unknown:
        logging.getLogger(__name__).warning("ignoring unknown --inputs entries %s", unknown)
    ft_cfg = params.get("finetune") or {}
    method_order = list(ft_cfg.get("methods", []))
    ft_rows = load_rows(_paths(inputs, "finetune"), require_dataset=True)
    ft_summary = fewshot_summary(ft_rows, method_order)
    ucpr_rows = collect.ucpr_rows(_paths(inputs, "ucpr"))
    text3d_rows = collect.text3d_rows(_paths(inputs, "align"))
    tables = {
        "fewshot": fewshot_table(ft_summary, ft_cfg, ft_rows),
        "ucpr": ucpr_table(ucpr_rows),
        "cpac": cpac_table(collect.cpac_rows(_paths(inputs, "cpac"))),
        "retrieval": retrieval_table(
            collect.retrieval_rows(
                _paths(inputs, "metric_heads"), _paths(inputs, "retrieval_heads"), _paths(inputs, "promptsg")
            )
        ),
        "text3d": text3d_table(text3d_rows),
    }
    figures = {
        "fewshot_accuracy": plots.fewshot_accuracy_png(ft_summary, method_order),
        "recall_at_k": plots.recall_at_k_png(text3d_rows, ucpr_rows),
    }
    return Report(tables, figures, {name: len(_paths(inputs, name)) for name in INPUT_NAMES})


def summary_markdown(report: Report, title: str, out_dir: Path, plots_dir: Path) -> str:
    rel_plots = Path(os.path.relpath(plots_dir, out_dir)).as_posix()
    lines = [
        f"# {title}",
        "",
        "Generated by `pipeline3d.stages.report` from the metrics JSONs (input files: "
        + ", ".join(f"{name} {n}" for name, n in report.counts.items())
        + ").",
        "",
        "Numbers: 3 decimals; mean ± std = mean and sample std (ddof=1) over seeds or query/gallery splits, "
        "with the count in the n(...) column; a single run shows ± -. Rows are sorted by a fixed key, so "
        "the same metrics give the same files.",
        "",
        "## Plots",
        "",
    ]
    for name in PLOT_NAMES:
        lines += [f"![{name}]({rel_plots}/{name}.png)", ""]
    for name in TABLE_NAMES:
        table = report.tables[name]
        lines += [f"Files: [{name}.md]({name}.md) · [{name}.csv]({name}.csv) · [{name}.tex]({name}.tex)", ""]
        body = table.to_markdown(heading_level=2)
        lines += [body.rstrip("\n"), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write(report: Report, title: str, out_dir: str | Path, plots_dir: str | Path) -> list[Path]:
    """Write every output (each atomically), always all of them; returns the paths written."""
    out_dir, plots_dir = Path(out_dir), Path(plots_dir)
    written = []
    for name in TABLE_NAMES:
        table = report.tables[name]
        for ext, text in (("md", table.to_markdown()), ("csv", table.to_csv()), ("tex", table.to_latex())):
            write_text(out_dir / f"{name}.{ext}", text)
            written.append(out_dir / f"{name}.{ext}")
    for name in PLOT_NAMES:
        write_bytes(plots_dir / f"{name}.png", report.plots[name])
        written.append(plots_dir / f"{name}.png")
    write_text(out_dir / "summary.md", summary_markdown(report, title, out_dir, plots_dir))
    written.append(out_dir / "summary.md")
    return written
