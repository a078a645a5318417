"""The difficulty_bands job: every item's nearest neighbours in one embedding space, cut into difficulty bands.

``space`` = ``<modality>/<dataset>/<model>`` names the embeddings file (--inputs embeddings). Items sharing an
identity (``difficulty.identity``: label, near-duplicate group or none; views of one shape always share it) are
never neighbours. Output columns: anchor_id, band, neighbour_id, rank, similarity (cosine) or distance; the band
spec, metric, k, space and identity are in the parquet metadata.
"""

from __future__ import annotations

import numpy as np

from ..embed.difficulty import difficulty_bands, parse_bands, write_difficulty
from ..embed.identity import row_identity
from ..embed.knn import METRICS
from ..embed.vectors import read_vectors


def run(params: dict, files: dict, out: str, log) -> int:
    cfg = params["difficulty"]
    spec = parse_bands(cfg)
    metric = cfg.get("metric", "cosine")
    if metric not in METRICS:
        raise ValueError(f"difficulty.metric must be one of {METRICS}, got {metric!r}")
    k = int(cfg["k"]) if cfg.get("k") is not None else (spec.max_rank if spec.by == "rank" else None)
    if k is None:
        raise ValueError("difficulty: quantile bands need difficulty.k (neighbours per anchor)")
    try:
        emb = read_vectors(files["embeddings"])
    except (OSError, KeyError) as exc:
        raise ValueError(f"{files['embeddings']}: cannot read the embeddings: {type(exc).__name__}: {exc}") from exc
    how = cfg.get("identity", "label")
    identity = row_identity(emb, how, manifest=files["manifest"], ttv=files["ttv"], duplicates=files.get("duplicates"))
    log.info(
        "%s: %d items (dim %d), identity %s (%d distinct), k %d, metric %s",
        params["space"],
        len(emb.ids),
        emb.dim,
        how,
        len(set(identity)),
        k,
        metric,
    )
    table = difficulty_bands(
        emb.vectors,
        np.asarray(emb.ids, dtype=object),
        spec,
        k=k,
        identity=identity,
        metric=metric,
        engine=str(cfg.get("engine", "cpu")),
    )
    write_difficulty(
        out,
        table,
        spec,
        metric,
        k,
        extra={
            "space": params["space"],
            "identity": how,
            "n_items": len(emb.ids),
            "embeddings": {key: emb.metadata.get(key) for key in ("model", "weights_sha256", "dataset")},
        },
    )
    log.info("wrote %d anchor-neighbour pairs to %s", len(table), out)
    return 0
