"""Read metrics JSONs into tidy rows (one pandas row per reported number set).

Nothing is skipped silently: a file that is unreadable, not a JSON object, or lacks a key the table needs raises a
ValueError naming the file and the key. Identity fields (dataset, method, backends) are read from the top level
of the JSON first and from its "protocol" (the stage params) second, so either producer layout works.

Layouts read (the keys each table uses):
- UCPR (results/eval/ucpr/<ds>/<method>/<q>--<g>.json): "results" (or "ablations"): {ablation: {"R@1", "R@5",
  "R@10", "MRR", optional "category_mAP", "n_query"}}, optional "chance" (same keys: random-ranking expectation,
  reported as the ablation "chance"), optional top-level "n_shapes"; identity dataset, method, query, gallery.
- CPAC (results/eval/cpac/<ds>/<method>/<ctx>.json): "metrics": {"probe": {"pooled": {"mae", "rmse", "iou"}},
  <baseline>: same} (eval_cpac's layout; keys case-insensitive, "IoU@<tau>" accepted), or "results" (the probe) +
  "baselines": {name: ...}; identity dataset, method, context_backend; tau and n_eval_shapes from the top level
  (tau else protocol.cpac.tau).
- metric heads (results/heads/metric/<modality>/<ds>/<model>/metrics.json): "space" = modality/dataset/model,
  "test_qg": {"projected", "raw"} each with "per_split": [{"rank@1", "rank@5", "rank@10", "mAP"}].
- retrieval heads (results/heads/retrieval/<ds>/<method>/metrics.json): "head", "raw", optional "head_pre_bn" and
  "descriptor_raw" (the hand-crafted shape-distribution floor, reported as "descriptor (raw)"), same per_split layout.
- text-3D alignment (results/align_text3d/<ds>/<method>/metrics.json): "test": {"t2m", "m2t"} -> R@1/3/5/10.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

_MISSING = object()
RETRIEVAL_METRICS = ("rank@1", "rank@5", "rank@10", "mAP")
TEXT3D_KS = (1, 3, 5, 10)


def read_metrics(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read metrics JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: metrics JSON must be an object, got {type(data).__name__}")
    return data


def metrics_lines(inputs: Mapping[str, Iterable[str | Path] | None]) -> str:
    """One JSON line per metrics file (kind, file, content), sorted; timings dropped so reruns give the same bytes."""
    lines = []
    for kind in sorted(inputs):
        for path in sorted(inputs[kind] or []):
            content = {k: v for k, v in read_metrics(path).items() if k != "seconds"}
            lines.append(json.dumps({"kind": kind, "file": str(path), "metrics": content}, sort_keys=True))
    return "".join(line + "\n" for line in lines)


def dig(obj: Any, path: str | Path, *keys: str, default: Any = _MISSING) -> Any:
    """obj[k1][k2]...; a missing key is a ValueError naming the file and the key path (unless a default)."""
    cur = obj
    for i, key in enumerate(keys):
        if not isinstance(cur, Mapping) or key not in cur:
            if default is not _MISSING:
                return default
            raise ValueError(f"{path}: metrics lack {'.'.join(keys[: i + 1])!r}")
        cur = cur[key]
    return cur


def number(value: Any, path: str | Path, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: {what} must be a number, got {value!r}")
    return float(value)


def identity(metrics: Mapping[str, Any], path: str | Path, *names: str) -> str:
    """The first of ``names`` found at the top level, else in "protocol" (as a string)."""
    for name in names:
        if isinstance(metrics.get(name), (str, int)):
            return str(metrics[name])
    protocol = metrics.get("protocol") if isinstance(metrics.get("protocol"), Mapping) else {}
    for name in names:
        if isinstance(protocol.get(name), (str, int)):
            return str(protocol[name])
    raise ValueError(f"{path}: metrics name no {' / '.join(names)} (top level or protocol)")


def _lookup(mapping: Mapping[str, Any], *candidates: str) -> Any:
    """A value by key, case-insensitively, first candidate first; None when absent."""
    lowered = {str(k).lower(): v for k, v in mapping.items()}
    for name in candidates:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


# ------------------------------------------------------------------------------------------------- UCPR
CHANCE = "chance"
UCPR_COLUMNS = [
    "dataset",
    "method",
    "query",
    "gallery",
    "ablation",
    "R@1",
    "R@5",
    "R@10",
    "MRR",
    "category_mAP",
    "n_query",
]


def ucpr_rows(paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        m = read_metrics(path)
        ident = {
            "dataset": identity(m, path, "dataset"),
            "method": identity(m, path, "method"),
            "query": identity(m, path, "query", "query_backend"),
            "gallery": identity(m, path, "gallery", "gallery_backend"),
        }
        section = "results" if "results" in m else "ablations" if "ablations" in m else "results"
        results = dig(m, path, section)
        if not isinstance(results, Mapping) or not results:
            raise ValueError(f"{path}: '{section}' must be a non-empty object of ablation -> metrics")
        entries = [(str(name), res, f"{section}.{name}") for name, res in results.items()]
        if isinstance(m.get("chance"), Mapping):  # the random-ranking expectation: the floor every row is read against
            entries.append((CHANCE, m["chance"], "chance"))
        n_default = _lookup(m, "n_query", "n_shapes")
        for ablation, res, where in entries:
            if not isinstance(res, Mapping):
                raise ValueError(f"{path}: '{where}' must be an object")
            row = dict(ident, ablation=ablation)
            for key in ("R@1", "R@5", "R@10", "MRR"):
                row[key] = number(_need(res, path, where, key), path, f"{where}.{key}")
            cat = _lookup(res, "category_mAP")
            row["category_mAP"] = None if cat is None else number(cat, path, f"{where}.category_mAP")
            n_query = _lookup(res, "n_query", "n")
            n_query = n_default if n_query is None else n_query
            row["n_query"] = _opt_int(n_query)
            rows.append(row)
    return pd.DataFrame(rows, columns=UCPR_COLUMNS)


def _need(res: Mapping[str, Any], path: str | Path, where: str, key: str) -> Any:
    """res[key] (case-insensitive); missing is a ValueError naming the file and '<where>.<key>'."""
    value = _lookup(res, key)
    if value is None:
        raise ValueError(f"{path}: metrics lack '{where}.{key}'")
    return value


# ------------------------------------------------------------------------------------------------- CPAC
CPAC_COLUMNS = ["dataset", "method", "context", "predictor", "MAE", "RMSE", "IoU", "tau", "n_shapes"]
MODEL_PREDICTOR = "ridge probe"
CPAC_MODEL_KEYS = ("probe", "model", "head")  # the encoder's probe in a "metrics" block; the rest are baselines


def _iou(res: Mapping[str, Any], path: str | Path, where: str) -> tuple[float | None, float | None]:
    """(IoU, tau from the key name or None): accepts "iou", "IoU@0.03", "iou_at_tau"...; a null IoU (no point
    within tau on either side) stays None."""
    for key, value in res.items():
        match = re.fullmatch(r"iou(?:@|_at_|_)?(tau|[0-9.eE+-]+)?", str(key).lower())
        if match:
            tau = match.group(1)
            iou = None if value is None else number(value, path, f"{where}.{key}")
            return iou, (float(tau) if tau and tau != "tau" else None)
    raise ValueError(f"{path}: metrics lack an IoU entry in '{where}'")


def _cpac_predictors(m: Mapping[str, Any], path: str | Path) -> list[tuple[str, Any, str]]:
    """(predictor label, metrics dict, where) for the probe first, then the baselines by name.

    Two layouts: {"metrics": {"probe": {"pooled": {...}}, "<baseline>": {"pooled": {...}}}} (eval_cpac), or
    {"results": {...}, "baselines": {name: {...}}}.
    """
    if isinstance(m.get("metrics"), Mapping):
        block = m["metrics"]
        model = next((k for k in CPAC_MODEL_KEYS if k in block), None)
        if model is None:
            raise ValueError(f"{path}: 'metrics' has no probe entry ({' / '.join(CPAC_MODEL_KEYS)})")
        out = []
        for name in [model, *sorted(k for k in block if k != model)]:
            res = block[name]
            pooled = res.get("pooled", res) if isinstance(res, Mapping) else res
            label = MODEL_PREDICTOR if name == model else f"baseline: {name}"
            out.append(
                (
                    label,
                    pooled,
                    f"metrics.{name}.pooled" if isinstance(res, Mapping) and "pooled" in res else f"metrics.{name}",
                )
            )
        return out
    results = dig(m, path, "results")
    out = [(MODEL_PREDICTOR, results, "results")]
    baselines = m.get("baselines", results.get("baselines") if isinstance(results, Mapping) else None)
    if baselines is not None:
        if not isinstance(baselines, Mapping):
            raise ValueError(f"{path}: 'baselines' must be an object of name -> metrics")
        out += [(f"baseline: {name}", baselines[name], f"baselines.{name}") for name in sorted(baselines)]
    return out


def cpac_rows(paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        m = read_metrics(path)
        ident = {
            "dataset": identity(m, path, "dataset"),
            "method": identity(m, path, "method"),
            "context": identity(m, path, "context_backend", "context"),
        }
        tau_default = _lookup(m, "tau")
        if tau_default is None:
            tau_default = dig(m, path, "protocol", "cpac", "tau", default=None)
        n_shapes = _opt_int(_lookup(m, "n_eval_shapes", "n_shapes"))
        for predictor, res, where in _cpac_predictors(m, path):
            if not isinstance(res, Mapping):
                raise ValueError(f"{path}: '{where}' must be an object")
            iou, tau = _iou(res, path, where)
            if tau is None:
                tau = _lookup(res, "tau")
            if tau is None:
                tau = tau_default
            n = _opt_int(_lookup(res, "n_shapes", "n_eval_shapes"))
            rows.append(
                dict(
                    ident,
                    predictor=predictor,
                    MAE=number(_need(res, path, where, "MAE"), path, f"{where}.MAE"),
                    RMSE=number(_need(res, path, where, "RMSE"), path, f"{where}.RMSE"),
                    IoU=iou,
                    tau=None if tau is None else float(tau),
                    n_shapes=n_shapes if n is None else n,
                )
            )
    return pd.DataFrame(rows, columns=CPAC_COLUMNS)


def _opt_int(value: Any) -> int | None:
    return None if value is None or isinstance(value, bool) else int(value)


# ------------------------------------------------------------------------------------------------- heads
RETRIEVAL_COLUMNS = ["dataset", "head", "model", "embedding", "n_split", *RETRIEVAL_METRICS]
# (metrics key, embedding label) of a retrieval head's blocks, in table order
RETRIEVAL_HEAD_BLOCKS = (
    ("head", "retrieval head"),
    ("head_pre_bn", "retrieval head (pre-BN)"),
    ("raw", "raw"),
    ("descriptor_raw", "descriptor (raw)"),
)
OPTIONAL_RETRIEVAL_BLOCKS = ("head_pre_bn", "descriptor_raw")
# a PromptSG variant's blocks (the raw floor needs the shape embeddings among the job's inputs)
PROMPTSG_BLOCKS = (("head", "PromptSG"), ("raw", "raw"), ("descriptor_raw", "descriptor (raw)"))
OPTIONAL_PROMPTSG_BLOCKS = ("raw", "descriptor_raw")


def _split_values(block: Any, path: str | Path, where: str) -> dict[str, list[float]]:
    """Per-metric lists of the finite per-split values (a NaN split had no scorable query)."""
    per_split = dig(block, path, *where.split("."), "per_split")
    if not isinstance(per_split, list) or not per_split:
        raise ValueError(f"{path}: '{where}.per_split' must be a non-empty list")
    out: dict[str, list[float]] = {}
    for metric in RETRIEVAL_METRICS:
        values = [
            number(
                _need(s, path, f"{where}.per_split[{i}]", metric) if isinstance(s, Mapping) else s,
                path,
                f"{where}.per_split[{i}].{metric}",
            )
            for i, s in enumerate(per_split)
        ]
        out[metric] = [v for v in values if not math.isnan(v)]
    return out


def retrieval_rows(
    metric_head_paths: Iterable[str | Path],
    retrieval_head_paths: Iterable[str | Path],
    promptsg_paths: Iterable[str | Path] = (),
) -> pd.DataFrame:
    """One row per (head file, embedding): the per-split values of Rank@1/5/10 and mAP (lists, for mean ± std).
    A PromptSG job's rows name its model ``<method>/<variant>``."""
    rows = []
    for path in metric_head_paths:
        m = read_metrics(path)
        space = str(dig(m, path, "space"))
        parts = space.split("/")
        if len(parts) != 3:
            raise ValueError(f"{path}: 'space' must be <modality>/<dataset>/<model>, got {space!r}")
        modality, dataset, model = parts
        for key, label in (("projected", "metric head"), ("raw", "raw")):
            values = _split_values(m, path, f"test_qg.{key}")
            rows.append(
                {
                    "dataset": dataset,
                    "head": "metric",
                    "model": f"{modality}/{model}",
                    "embedding": label,
                    "n_split": len(values["mAP"]),
                    **values,
                }
            )
    for path in retrieval_head_paths:
        m = read_metrics(path)
        dataset, method = identity(m, path, "dataset"), identity(m, path, "method")
        for key, label in RETRIEVAL_HEAD_BLOCKS:
            if key in OPTIONAL_RETRIEVAL_BLOCKS and key not in m:
                continue
            values = _split_values(m, path, key)
            rows.append(
                {
                    "dataset": dataset,
                    "head": "retrieval",
                    "model": method,
                    "embedding": label,
                    "n_split": len(values["mAP"]),
                    **values,
                }
            )
    for path in promptsg_paths:
        m = read_metrics(path)
        dataset, model = identity(m, path, "dataset"), f"{identity(m, path, 'method')}/{identity(m, path, 'variant')}"
        for key, label in PROMPTSG_BLOCKS:
            if key in OPTIONAL_PROMPTSG_BLOCKS and key not in m:
                continue
            values = _split_values(m, path, key)
            rows.append(
                {
                    "dataset": dataset,
                    "head": "promptsg",
                    "model": model,
                    "embedding": label,
                    "n_split": len(values["mAP"]),
                    **values,
                }
            )
    return pd.DataFrame(rows, columns=RETRIEVAL_COLUMNS)


# ------------------------------------------------------------------------------------------------- text-3D
TEXT3D_DIRECTIONS = {"t2m": "text -> mesh", "m2t": "mesh -> text"}
TEXT3D_COLUMNS = ["dataset", "method", "direction", "fold", *(f"R@{k}" for k in TEXT3D_KS)]


def text3d_rows(paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        m = read_metrics(path)
        dataset, method = identity(m, path, "dataset"), identity(m, path, "method")
        fold = m.get("fold")
        for key, label in TEXT3D_DIRECTIONS.items():
            res = dig(m, path, "test", key)
            row = {
                "dataset": dataset,
                "method": method,
                "direction": label,
                "fold": None if fold is None else str(fold),
            }
            for k in TEXT3D_KS:
                row[f"R@{k}"] = number(_need(res, path, f"test.{key}", f"R@{k}"), path, f"test.{key}.R@{k}")
            rows.append(row)
    return pd.DataFrame(rows, columns=TEXT3D_COLUMNS)
