"""One N-way K-shot episode job: (dataset, method, setting, fold) -> metrics.

- Train set: the episode's support shapes (K per class, from the ttv train split); test set: its query shapes (from
  the ttv test split). Labels are the episode labels 0..N-1, class names the N names in that order.
- No validation split: the protocol has none, and selecting on the query set would report the best of many test
  reads. Selection is therefore always the last step, whatever ``finetune.selection`` says.
- Seeds: the config seed with the key ``<dataset>|<method>|<setting>|f<fold>``, so every episode draws its own
  initialisation (scratch encoder, head, descriptor classifier) while reruns stay byte-identical.
- A setting that splits.episodes skipped for this dataset (fewer than N classes with K support groups) is not an
  error: the job writes metrics that say so, and the episode table lists the setting as skipped.
The training itself is ``jobs.finetune.run_with_split`` (or ``jobs.descriptor.run_with_split`` for the hand-crafted
floor), the same code as the per-class K-shot table.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..data.selection import episode_classes, episode_labels
from ..data.splits.episodes import parse_setting
from ..finetune_rows import DESCRIPTOR
from ..train.loop import TrainResult
from . import finetune


def split_info(episodes_path: str | Path) -> dict[str, Any]:
    """The metadata make_splits wrote into episodes.parquet (splits keys, per-setting notes)."""
    meta = pq.read_schema(episodes_path).metadata or {}
    raw = meta.get(b"pipeline3d.split")
    if raw is None:
        raise ValueError(f"{episodes_path}: no split metadata; was it written by make_splits?")
    return json.loads(raw)


def skip_reason(info: Mapping[str, Any], setting: str) -> str | None:
    """Why make_splits skipped ``setting`` for this dataset, or None when it drew the episodes."""
    return (info.get("notes") or {}).get(setting, {}).get("skipped")


def episode_split(params: Mapping[str, Any], files: Mapping[str, Any]) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Role -> {shape id: episode label} (train = support, val = none, test = query) and the N class names."""
    setting, fold = params["setting"], int(params["fold"])
    labels = {
        "train": episode_labels(files["episodes"], setting=setting, fold=fold, role="support"),
        "val": {},
        "test": episode_labels(files["episodes"], setting=setting, fold=fold, role="query"),
    }
    all_names = finetune.class_names(files["manifest"])
    names = [
        all_names[c] if c < len(all_names) else f"class_{c}"
        for c in episode_classes(files["episodes"], setting=setting, fold=fold)
    ]
    return labels, names


def job_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The rule's params plus what the shared fine-tune code reads: K (= the shot count), the episode key, and
    selection on the last step."""
    way, shot = parse_setting(params["setting"])
    key = f"{params['dataset']}|{params['method']}|{params['setting']}|f{int(params['fold'])}"
    return {
        **params,
        "way": way,
        "shot": shot,
        "k": shot,
        "key": key,
        "finetune": {**params["finetune"], "selection": "last"},
    }


def episode_fields(
    params: Mapping[str, Any], labels: Mapping[str, Mapping[str, int]], info: Mapping[str, Any]
) -> dict[str, Any]:
    """What identifies the episode in its metrics, and how many query shapes each class had."""
    per_class = Counter(labels["test"].values())
    return {
        "setting": params["setting"],
        "way": params["way"],
        "shot": params["shot"],
        "fold": int(params["fold"]),
        "support_shapes": len(labels["train"]),
        "query_shapes": len(labels["test"]),
        "query_per_class": {
            "min": min(per_class.values()),
            "max": max(per_class.values()),
            "target": info.get("splits", {}).get("episodes", {}).get("query_per_class"),
        },
    }


def run(
    params: Mapping[str, Any], files: Mapping[str, Any], state_dir: str | Path, *, log: logging.Logger
) -> tuple[dict[str, Any] | None, TrainResult | None]:
    """Train on the support set and test on the query set; returns (metrics, result).

    metrics is None when training was interrupted (result says how); result is None when no network was trained
    (the descriptor floor, or a skipped setting).
    """
    params = job_params(params)
    info = split_info(files["episodes"])
    reason = skip_reason(info, params["setting"])
    if reason:
        log.warning("%s: setting %s is skipped for this dataset: %s", params["key"], params["setting"], reason)
        return {
            "dataset": params["dataset"],
            "method": params["method"],
            "setting": params["setting"],
            "way": params["way"],
            "shot": params["shot"],
            "fold": int(params["fold"]),
            "skipped": reason,
        }, None
    labels, names = episode_split(params, files)
    fields = episode_fields(params, labels, info)
    target = fields["query_per_class"]["target"]
    if target and fields["query_per_class"]["min"] < target:
        log.warning(
            "%s: %d to %d query shapes per class (the protocol asks for %d; the test split holds fewer)",
            params["key"],
            fields["query_per_class"]["min"],
            fields["query_per_class"]["max"],
            target,
        )
    if params.get("row_kind", params["method"]) == DESCRIPTOR:
        from . import descriptor  # imported here: the floor's dependencies are not the network's

        metrics, result = descriptor.run_with_split(params, files, labels, names, log=log), None
    else:
        metrics, result = finetune.run_with_split(params, files, labels, names, state_dir, log=log)
    if metrics is None:
        return None, result
    return {**metrics, **fields}, result


def stage(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    out: Mapping[str, str],
    log: logging.Logger,
) -> tuple[dict[str, Any] | None, TrainResult | None]:
    """The finetune_episode job (the metrics JSON is its only output)."""
    return run(params, files, state_dir, log=log)


def summary(metrics: Mapping[str, Any]) -> str:
    if "test" not in metrics:
        return f"{metrics['setting']} fold {metrics['fold']}: skipped ({metrics.get('skipped')})"
    test = metrics["test"]
    return (
        f"{metrics['setting']} fold {metrics['fold']}: test accuracy {test['accuracy']:.4f} (mean class accuracy "
        f"{test['mean_class_accuracy']:.4f}) over {test['n']} query shapes"
    )
