"""The eval_ucpr job: unpaired cross-primitive retrieval of one pretrained encoder, one (query, gallery) backend pair.

Eval shapes: the unpaired split's "eval" shapes (ttv "test" for datasets without an unpaired split), a
class-stratified subset of ``max_files`` of them (null = all). Each shape is embedded as a query (query backend,
token draws keyed by ``query_seed``) and as a gallery item (gallery backend, ``gallery_seed``, which must differ):
``mc_draws`` draws, each pooled (eos | mean) and L2-normalised, averaged and re-normalised. Query i's match is
gallery i. Metrics per ablation (applied to query and gallery tokens alike): R@1/5/10, MRR, mean/median rank
(tie-aware: expected values under a random order of tied scores), category mAP and category R@1, with their chance
levels. See ``pipeline3d.eval.ucpr``.
"""

from __future__ import annotations

import time
from collections import Counter
from functools import partial

from ..data.selection import cached_rows
from ..device import job_device
from ..embed.shapes import embed_shapes, encoder_files, eval_token_config
from ..embed.sources import read_manifest
from ..eval.ucpr import (
    ablate,
    chance_levels,
    check_ablations,
    check_seeds,
    eval_set,
    instance_metrics,
    n_zeroed,
    stratified_subset,
)
from ..io.atomic import write_json
from ..tokens.dataset import CacheEntry, ShapeTokenDataset
from ..train.export import load_encoder
from .provenance import provenance

STAGE = "eval_ucpr"


class _Ablation:
    """The batch transform of one ablation; counts the non-zero values it zeroes (0 = a no-op: log it)."""

    def __init__(self, name: str):
        self.name, self.zeroed = name, 0

    def __call__(self, batch: dict) -> dict:
        self.zeroed += n_zeroed(batch, self.name)
        return ablate(batch, self.name)


def run(params: dict, files: dict, out: str, log, workers: int = 0) -> int:
    started = time.time()
    cfg = params["ucpr"]
    query_seed, gallery_seed = int(cfg["query_seed"]), int(cfg["gallery_seed"])
    check_seeds(query_seed, gallery_seed)
    ablations = check_ablations(cfg["ablations"])
    if cfg["pool"] not in ("eos", "mean"):
        raise ValueError(f"eval.ucpr.pool must be 'eos' or 'mean', got {cfg['pool']!r}")

    labels, source = eval_set(files.get("unpaired"), files["ttv"])
    max_files = cfg.get("max_files")
    chosen = stratified_subset(labels, None if max_files is None else int(max_files), int(params["seed"]))
    rows = cached_rows({sid: labels[sid] for sid in chosen}, files["index"], files["shards"])
    entries = [CacheEntry(r.shape_id, r.shard_path, r.row, r.label) for r in rows]
    manifest = read_manifest(files["manifest"])
    name_of = {
        sid: str(manifest.at[sid, "label_name"]) if sid in manifest.index else str(labels[sid]) for sid in labels
    }
    available = Counter(name_of[sid] for sid in labels)
    counts = Counter(name_of[e.shape_id] for e in entries)
    log.info(
        "%s/%s %s -> %s: %d of %d %s shapes (%d classes)",
        params["dataset"],
        params["method"],
        params["query"],
        params["gallery"],
        len(entries),
        len(labels),
        source,
        len(counts),
    )

    encoder_info = encoder_files(files["weights"], files["encoder_json"])
    pretrained = encoder_info.pretrained_tokens or params["tokens"]
    toks = {
        side: eval_token_config(pretrained, n_point=int(cfg["n_point"]), n_ray=int(cfg["n_ray"]), eval_seed=seed)
        for side, seed in (("query", query_seed), ("gallery", gallery_seed))
    }
    mc_draws = int(cfg["mc_draws"])
    datasets = {
        side: ShapeTokenDataset(
            entries, params[side], toks[side], seed=int(params["seed"]), mode="eval", mc_draws=mc_draws
        )
        for side in ("query", "gallery")
    }
    encoder = load_encoder(encoder_info.weights, encoder_info.sidecar, device=job_device())
    embed = partial(
        embed_shapes,
        encoder,
        batch_size=int(cfg["batch_size"]),
        pool=cfg["pool"],
        num_workers=workers,
        causal=encoder_info.causal,
        normalize_draws=True,
    )

    shape_labels = [e.label for e in entries]
    results, zeroed = {}, {}
    try:
        for name in ablations:
            vectors, zeroed[name] = {}, {}
            for side in ("query", "gallery"):
                transform = _Ablation(name)
                vectors[side] = embed(datasets[side], transform=transform)
                zeroed[name][side] = transform.zeroed
                if name != "none" and transform.zeroed == 0:
                    log.warning(
                        "ablation %s zeroed nothing on the %s side (%s backend): it equals the baseline",
                        name,
                        side,
                        params[side],
                    )
            results[name] = instance_metrics(vectors["query"], vectors["gallery"], shape_labels)
            log.info("ablation %-10s %s", name, " ".join(f"{k}={v:.4f}" for k, v in results[name].items()))
    finally:
        for ds in datasets.values():
            ds.close()

    metrics = {
        **provenance(params, started),
        "dataset": params["dataset"],
        "method": params["method"],
        "query": params["query"],
        "gallery": params["gallery"],
        "eval_set": source,
        "n_shapes": len(entries),
        "n_eval_available": len(labels),
        "per_class_counts": dict(sorted(counts.items())),
        "per_class_available": dict(sorted(available.items())),
        "encoder": encoder_info.registry_name,
        "causal": encoder_info.causal,
        "token_config": {k: v for k, v in toks["query"].items() if k != "eval_seed"},
        "ranking": "tie-aware: expected rank / reciprocal rank / hit@k under a random order of tied scores",
        "chance": chance_levels(shape_labels),
        "ablations": results,
        "ablation_zeroed_values": zeroed,
    }
    write_json(out, metrics)
    log.info("wrote %s", out)
    return 0
