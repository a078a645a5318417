"""The eval_cpac job: CPAC-UDF completion probe of one pretrained encoder with one context backend.

From ``n_context`` pool points with the context backend's own distances, a ridge head on the encoder's hidden
states at ``n_query`` query-only tokens predicts the EXACT mesh distance there (``pool_dist_mesh``). Metrics and
head: ``pipeline3d.eval.cpac``; sequence layout, query positions and draws: ``eval.cpac_sequence``.

Head (``cpac.head``):
* ``non_transductive`` (default): fit on the ``head_split`` shapes of the unpaired split (e.g. train_udf) with
  ``head_backend`` context, draws of role "head"; test on the eval shapes (unpaired "eval", else the ttv test
  split) with ``context_backend`` context, draws of role "test".
* ``transductive``: a class-stratified ``transductive_fraction`` of the eval shapes (stable hash) fits the head,
  the rest is tested; both with ``context_backend`` context.
``max_head_shapes`` / ``max_eval_shapes`` cap the shape sets (class-stratified, stable hash; null = all).

Params {seed, dataset, method, context_backend, cpac, tokens}; inputs {manifest, unpaired, ttv, index, shards,
weights, encoder_json}.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cache_lookup import locate_rows
from ..device import job_device
from ..embed.shapes import encoder_files
from ..embed.sources import read_manifest
from ..eval import cpac as C
from ..eval import cpac_features as CF
from ..eval import cpac_sequence as CS
from ..eval import cpac_shapes as CSh
from ..io.atomic import write_json
from ..io.tables import read_parquet
from ..tokens import layout as L
from ..tokens.backends import get_backend
from ..train.export import load_encoder
from .provenance import provenance

HEAD_MODES = ("non_transductive", "transductive")


def _split_table(path: str, what: str) -> pd.DataFrame:
    try:
        table = read_parquet(path, columns=["shape_id", "label", "split"])
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read the {what} split table (need shape_id, label, split): {exc}") from exc
    return table.assign(
        shape_id=table["shape_id"].astype(str), label=table["label"].astype("int64"), split=table["split"].astype(str)
    )


def _labels(table: pd.DataFrame, split: str) -> dict[str, int]:
    rows = table[table["split"] == split]
    return dict(zip(rows["shape_id"], rows["label"].astype(int)))


def _finite(obj):
    """JSON-safe: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def select_shapes(params: dict, files: dict, log) -> tuple[dict[str, int], dict[str, int], str]:
    """(head shape labels, test shape labels, where the eval shapes came from), capped as configured."""
    cpac, seed = params["cpac"], int(params["seed"])
    unpaired = _split_table(files["unpaired"], "unpaired")
    eval_labels, eval_source = _labels(unpaired, "eval"), "unpaired:eval"
    if not eval_labels:
        eval_labels, eval_source = _labels(_split_table(files["ttv"], "ttv"), "test"), "ttv:test"
    if not eval_labels:
        raise ValueError(f"{files['unpaired']} has no 'eval' shapes and {files['ttv']} no 'test' shapes")
    eval_ids = C.stratified_subset(
        list(eval_labels), list(eval_labels.values()), cpac.get("max_eval_shapes"), f"{seed}|eval"
    )
    eval_labels = {sid: eval_labels[sid] for sid in eval_ids}
    if cpac["head"] == "non_transductive":
        head_labels = _labels(unpaired, cpac["head_split"])
        if not head_labels:
            raise ValueError(
                f"{files['unpaired']}: no shapes in cpac.head_split = {cpac['head_split']!r} "
                f"(splits there: {sorted(set(unpaired['split']))})"
            )
        head_ids = C.stratified_subset(
            list(head_labels), list(head_labels.values()), cpac.get("max_head_shapes"), f"{seed}|head"
        )
        return {sid: head_labels[sid] for sid in head_ids}, eval_labels, eval_source
    fraction = float(cpac["transductive_fraction"])
    if not 0.0 < fraction < 1.0 or len(eval_labels) < 2:
        raise ValueError(
            f"transductive CPAC needs 0 < cpac.transductive_fraction < 1 (got {fraction}) and at least "
            f"2 eval shapes (got {len(eval_labels)})"
        )
    n_fit = min(max(1, int(round(fraction * len(eval_labels)))), len(eval_labels) - 1)
    cap = params["cpac"].get("max_head_shapes")
    n_fit = n_fit if cap is None else min(n_fit, int(cap))
    fit = set(C.stratified_subset(list(eval_labels), list(eval_labels.values()), n_fit, f"{seed}|transductive"))
    log.info("transductive head: %d of %d eval shapes fit the head, the rest are tested", len(fit), len(eval_labels))
    return (
        {s: c for s, c in eval_labels.items() if s in fit},
        {s: c for s, c in eval_labels.items() if s not in fit},
        eval_source,
    )


def run(params: dict, files: dict, log) -> dict:
    cpac = params["cpac"]
    if cpac["head"] not in HEAD_MODES:
        raise ValueError(f"cpac.head must be one of {HEAD_MODES}, got {cpac['head']!r}")
    context_backend = params["context_backend"]
    head_backend = cpac["head_backend"] if cpac["head"] == "non_transductive" else context_backend
    for name in (context_backend, head_backend):
        get_backend(name)  # unknown names fail before any work
    n_context, n_query = int(cpac["n_context"]), int(cpac["n_query"])
    lam, tau, batch_size, seed = (
        float(cpac["ridge_lambda"]),
        float(cpac["tau"]),
        int(cpac["batch_size"]),
        int(params["seed"]),
    )

    encoder_info = encoder_files(files["weights"], files["encoder_json"])
    pretrained = encoder_info.pretrained_tokens or params["tokens"]
    tok = CS.context_token_config(pretrained, n_context)

    manifest = read_manifest(files["manifest"])
    class_names = {int(c): str(n) for c, n in zip(manifest["label"], manifest["label_name"])}
    head_labels, test_labels, eval_source = select_shapes(params, files, log)
    where = locate_rows(files["index"], files["shards"])
    head_shapes = CSh.shapes_from(where, head_labels, list(head_labels))
    test_shapes = CSh.shapes_from(where, test_labels, list(test_labels))
    log.info(
        "%s/%s: head %s on %d shapes (%s context), test on %d shapes from %s (%s context) | %d context + %d "
        "query points | tokens %s",
        params["dataset"],
        params["method"],
        cpac["head"],
        len(head_shapes),
        head_backend,
        len(test_shapes),
        eval_source,
        context_backend,
        n_context,
        n_query,
        "Q/A" if tok.qa_tokens else "legacy",
    )

    encoder = load_encoder(encoder_info.weights, encoder_info.sidecar, device=job_device())
    common = dict(n_query=n_query, seed=seed, batch_size=batch_size, causal=encoder_info.causal)
    weights, bias, y_mean, n_head = C.fit_head(
        CF.encode_shapes(encoder, head_shapes, head_backend, tok, role="head", **common), lam
    )
    log.info(
        "ridge head: %d features, lambda %g, bias %.4f, head-train target mean %.4f", len(weights), lam, bias, y_mean
    )
    metrics, n_eval = C.evaluate(
        CF.encode_shapes(encoder, test_shapes, context_backend, tok, role="test", **common),
        weights,
        bias,
        y_mean,
        class_names,
        tau,
    )
    pooled = metrics["probe"]["pooled"]
    log.info(
        "CPAC %s: MAE %.4f RMSE %.4f IoU@%g %s | context-NN MAE %.4f",
        context_backend,
        pooled["mae"],
        pooled["rmse"],
        tau,
        pooled["iou"],
        metrics["context_nn"]["pooled"]["mae"],
    )
    caveats = [] if tok.qa_tokens else [C.LEGACY_CAVEAT]
    return {
        "n_head_shapes": n_head,
        "n_eval_shapes": n_eval,
        "metrics": metrics,
        "head": {
            "mode": cpac["head"],
            "backend": head_backend,
            "split": cpac["head_split"] if cpac["head"] == "non_transductive" else "eval",
            "lambda": lam,
            "n_features": len(weights),
            "target_mean": y_mean,
        },
        "eval_shapes_from": eval_source,
        "target": C.TARGET_KEY,
        "tau": tau,
        "queries": {
            "token": L.TYPE_NAMES[L.Q_POINT if tok.qa_tokens else L.POINT],
            "answer_tokens": False,
            "position": CS.query_position(tok),
            "attends": "context and itself only",
            "features": "final hidden state at the query token",
            "caveats": caveats,
        },
        "tokens": {
            "n_context": n_context,
            "n_query": n_query,
            "qa_tokens": tok.qa_tokens,
            "add_eos": tok.add_eos,
            "layout_n_point": tok.layout_n_point,
            "layout_n_ray": tok.layout_n_ray,
            "causal": encoder_info.causal,
        },
    }


def write_metrics(params: dict, files: dict, metrics_path: str | Path, log) -> None:
    """``run`` and its metrics JSON (non-finite values as null), with the protocol, code version and wall time."""
    started = time.time()
    results = run(params, files, log)
    out = _finite(results) | provenance(params, started)
    write_json(Path(metrics_path), out)
    log.info("wrote %s", metrics_path)
