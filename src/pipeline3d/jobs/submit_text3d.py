"""The text-3D submission job: the fold with the best validation score (ties: lowest fold), rebuilt with
``load_alignment``, ranks the test split: each caption against the test shapes and each test shape against the test
captions. The helpers it shares with training (captions, tokens, projections, scores) are in ``align_text3d``."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..device import job_device
from ..embed.text3d_alignment import load_alignment
from ..io.atomic import atomic_path, write_json
from ..io.tables import read_parquet
from .align_text3d import TEST_KS, encode_texts, load_captions, project_shapes, retrieval_scores, shape_set, tokenize
from .provenance import provenance

SUBMISSION_DEPTH = 10


def choose_fold(fold_metrics: Sequence[Mapping[str, Any]]) -> int:
    """The fold with the best validation score; ties (and equal scores) go to the lowest fold."""
    scored = [
        (float(m["val"]["score"]), int(m["fold"])) for m in fold_metrics if not math.isnan(float(m["val"]["score"]))
    ]
    if not scored:
        raise ValueError(f"none of the {len(fold_metrics)} fold metrics has a validation score")
    best = max(s for s, _ in scored)
    return min(f for s, f in scored if s == best)


def _pick_by_sha(paths: Sequence[str], sha: str, what: str) -> str:
    from ..io.weights import file_sha256

    for path in paths:
        if file_sha256(path) == sha:
            return path
    raise ValueError(
        f"none of the {len(paths)} {what} files has the sha256 recorded in the chosen head.json ({sha[:16]}...)"
    )


def rankings(sim: np.ndarray, gallery_ids: Sequence[str], depth: int) -> list[list[str]]:
    """Top-``depth`` gallery ids per query by decreasing similarity (ties: gallery order)."""
    order = np.argsort(-sim, axis=1, kind="stable")[:, :depth]
    ids = np.asarray(gallery_ids, dtype=object)
    return [list(ids[row]) for row in order]


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


@dataclass
class Submission:
    text2mesh: pd.DataFrame
    mesh2text: pd.DataFrame
    metrics: dict[str, Any]


def submit(params: Mapping[str, Any], files: Mapping[str, Any], *, log: logging.Logger) -> Submission:
    """Rank the test split with the best fold's model."""
    metrics_files = _as_list(files["fold_metrics"])
    fold_metrics = [json.loads(Path(p).read_text()) for p in metrics_files]
    expected = sorted(int(f) for f in params.get("folds", [m["fold"] for m in fold_metrics]))
    got = sorted(int(m["fold"]) for m in fold_metrics)
    if got != expected:
        raise ValueError(f"fold metrics cover folds {got}, the config lists {expected}: {metrics_files}")
    fold = choose_fold(fold_metrics)
    heads = {int(json.loads(Path(p).read_text())["fold"]): p for p in _as_list(files["heads"])}
    if fold not in heads:
        raise ValueError(f"no head.json of fold {fold} among {list(files['heads'])}")
    head = json.loads(Path(heads[fold]).read_text())
    projection = _pick_by_sha(_as_list(files["projections"]), head["projection"]["sha256"], "projection")
    text_weights = _pick_by_sha(_as_list(files["text_towers"]), head["text"]["sha256"], "text tower")
    loaded = load_alignment(heads[fold], projection, text_weights, params["text"], device=job_device())
    log.info(
        "fold %d has the best validation score (%s); ranking the test split with it",
        fold,
        {int(m["fold"]): round(float(m["val"]["score"]), 4) for m in fold_metrics},
    )

    ttv = read_parquet(files["ttv"], columns=["shape_id", "label", "split"])
    test = shape_set(files["shape_embeddings"], ttv[ttv["split"] == "test"])
    if not len(test):
        raise ValueError(f"{files['ttv']}: the test split is empty")
    captions = load_captions(params, files).for_shapes(test.ids, test.labels)
    if not len(captions):
        raise ValueError(f"no caption describes a test shape of {params['dataset']} ({len(test)} shapes)")
    tokens, row = tokenize(loaded.backbone, captions.texts)
    text = encode_texts(loaded.tower, tokens)[row]
    shapes = project_shapes(loaded.projection, test.vectors)
    relevant = captions.relevance(test.ids, test.labels)
    scores = retrieval_scores(text, shapes, relevant, TEST_KS)
    sim = text.astype(np.float64) @ shapes.astype(np.float64).T

    k_shapes, k_captions = min(SUBMISSION_DEPTH, len(test)), min(SUBMISSION_DEPTH, len(captions))
    t2m = pd.DataFrame(rankings(sim, test.ids, k_shapes), columns=[f"rank_{i + 1}" for i in range(k_shapes)])
    t2m.insert(0, "query_text", captions.texts)
    t2m.insert(0, "query_id", captions.caption_ids)
    m2t = pd.DataFrame(
        rankings(sim.T, captions.caption_ids, k_captions), columns=[f"rank_{i + 1}" for i in range(k_captions)]
    )
    m2t.insert(0, "query_id", test.ids)
    metrics = {
        "dataset": params["dataset"],
        "method": params["method"],
        "fold": fold,
        "fold_val_scores": {str(int(m["fold"])): float(m["val"]["score"]) for m in fold_metrics},
        "caption_source": captions.source,
        "test_shapes": len(test),
        "test_captions": len(captions),
        "test": scores,
        "queries_without_relevant": {
            "t2m": int((~relevant.any(axis=1)).sum()),
            "m2t": int((~relevant.any(axis=0)).sum()),
        },
        "temperature": head["temperature"],
        "text": {
            "model": head["text"]["model"],
            "base_weights_sha256": head["text"]["base_weights_sha256"],
            "trainable_blocks": head["text"]["trainable_blocks"],
        },
    }
    return Submission(t2m, m2t, metrics)


def write_submission(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    text2mesh: str,
    mesh2text: str,
    metrics_path: str,
    log: logging.Logger,
) -> None:
    """``submit`` and its outputs: the two rankings (CSV) and the test metrics (with the protocol and code version)."""
    started = time.time()
    result = submit(params, files, log=log)
    for frame, path in ((result.text2mesh, text2mesh), (result.mesh2text, mesh2text)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, lineterminator="\n")
    metrics = result.metrics | provenance(params, started)
    write_json(metrics_path, metrics)
    test = metrics["test"]
    log.info(
        "fold %d | test t2m R@1/5/10 %.4f/%.4f/%.4f | m2t %.4f/%.4f/%.4f | %d captions x %d shapes",
        metrics["fold"],
        test["t2m"]["R@1"],
        test["t2m"]["R@5"],
        test["t2m"]["R@10"],
        test["m2t"]["R@1"],
        test["m2t"]["R@5"],
        test["m2t"]["R@10"],
        metrics["test_captions"],
        metrics["test_shapes"],
    )
