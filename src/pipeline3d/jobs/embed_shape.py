"""The embed_shape job: every cached shape of a dataset -> an L2-normalised vector from a pretrained encoder.

All splits are embedded (the ``split`` column says which ttv split a shape is in). Each shape is encoded on
``shape.mc_draws`` deterministic evaluation token draws (keyed by shape id and ``eval_seed``), pooled (mean over
valid content tokens or the EOS state) and averaged; see ``pipeline3d.embed.shapes``. The output does not depend
on the batch size or on which shapes share a batch. Metadata: model (registry name), weights sha256, preprocessing
(the token config), method, backend, mc_draws, pool.
"""

from __future__ import annotations

import json

from ..data.cache_lookup import locate_rows
from ..device import job_device
from ..embed.shapes import embed_shapes, encoder_files, eval_token_config, split_column
from ..embed.sources import read_manifest
from ..embed.vectors import write_vectors
from ..io.weights import file_sha256
from ..tokens.dataset import CacheEntry, ShapeTokenDataset
from ..train.export import load_encoder


def run(params: dict, files: dict, out: str, log, workers: int = 0) -> int:
    shape = params["shape"]
    encoder_info = encoder_files(files["weights"], files["encoder_json"])
    pretrained = encoder_info.pretrained_tokens or params["tokens"]
    eval_seed = params.get("eval_seed", params["tokens"].get("eval_seed", 0))
    tok = eval_token_config(
        pretrained, n_point=int(shape["n_point"]), n_ray=int(shape["n_ray"]), eval_seed=int(eval_seed)
    )

    manifest = read_manifest(files["manifest"])
    where = locate_rows(files["index"], files["shards"])
    ids = sorted(where)
    if not ids:
        raise ValueError(f"{files['index']}: the cache of {params['dataset']} holds no shapes")
    unknown = [sid for sid in ids if sid not in manifest.index]
    if unknown:
        raise ValueError(
            f"{files['index']}: {len(unknown)} cached shapes are not in {files['manifest']} (first: {unknown[:3]})"
        )
    labels = [int(manifest.at[sid, "label"]) for sid in ids]
    entries = [CacheEntry(sid, str(where[sid][0]), int(where[sid][1]), label) for sid, label in zip(ids, labels)]
    mc_draws = int(shape["mc_draws"])
    dataset = ShapeTokenDataset(
        entries, shape["backend"], tok, seed=int(params["seed"]), mode="eval", mc_draws=mc_draws
    )
    encoder = load_encoder(encoder_info.weights, encoder_info.sidecar, device=job_device())
    log.info(
        "%s/%s: %d shapes x %d draws | encoder %s (%s) | backend %s | tokens %s",
        params["dataset"],
        params["method"],
        len(ids),
        mc_draws,
        encoder_info.registry_name,
        "causal" if encoder_info.causal else "bidirectional",
        shape["backend"],
        json.dumps(tok, sort_keys=True),
    )
    try:
        vectors = embed_shapes(
            encoder,
            dataset,
            batch_size=int(shape["batch_size"]),
            pool=shape["pool"],
            causal=encoder_info.causal,
            num_workers=workers,
        )
    finally:
        dataset.close()
    metadata = {
        "model": encoder_info.registry_name,
        "weights_sha256": file_sha256(encoder_info.weights),
        "preprocessing": json.dumps(tok, sort_keys=True),
        "modality": "shape",
        "dataset": params["dataset"],
        "method": params["method"],
        "backend": shape["backend"],
        "mc_draws": str(mc_draws),
        "pool": shape["pool"],
        "causal": json.dumps(encoder_info.causal),
    }
    columns = {
        "label": labels,
        "label_name": [str(manifest.at[sid, "label_name"]) for sid in ids],
        "split": split_column(ids, files["ttv"]),
    }
    write_vectors(out, ids, vectors, metadata, id_column="shape_id", columns=columns)
    log.info("wrote %d x %d vectors to %s", *vectors.shape, out)
    return 0
