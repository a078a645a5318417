"""A pretraining run: mixed corpus -> encoder + objective -> the resumable loop -> exported encoder."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import canonical_json, cfg_hash
from ..io.atomic import atomic_path
from ..log import git_describe
from ..models.point_patch import PATCH_ENCODERS, uses_patches
from ..models.registry import create_encoder
from ..objectives import build_objective
from ..rng import stable_hash
from ..tokens.collate import collate
from ..tokens.corpus import EpochView, MixedCorpus
from ..tokens.layout import n_positions
from ..tokens.patches import PatchConfig, token_kind
from ..train.checkpoint import run_fingerprint
from ..train.export import save_encoder
from ..train.loop import EpochData, TrainConfig, TrainResult, train
from ..train.wandb_sink import metrics_sinks
from .data import corpus_datasets

# Objectives whose encoder attends both ways; fine-tuning reads this from the export to run the encoder the same way.
BIDIRECTIONAL = {
    "mae": lambda cfg: bool(cfg.get("bidirectional", True)),
    "cmae": lambda cfg: True,
    "point_mae": lambda cfg: True,
}


def build_encoder(model_cfg: Mapping[str, Any], tok_cfg: Mapping[str, Any], *, seed: int, key: str):
    """The configured encoder for the token kind (a position table for query tokens, the patch shape for patches);
    init seeded by (seed, key)."""
    overrides = {k: model_cfg[k] for k in ("d_model", "depth", "heads") if model_cfg.get(k) is not None}
    where = f"model.encoder {model_cfg['encoder']!r}"
    if (model_cfg["encoder"] in PATCH_ENCODERS) != (token_kind(tok_cfg) == "patch"):  # before building: clearer
        raise ValueError(
            token_mismatch(
                where, "PointPatch" if model_cfg["encoder"] in PATCH_ENCODERS else "QueryNepa", token_kind(tok_cfg)
            )
        )
    torch.manual_seed(stable_hash(f"{seed}|init|{key}") % 2**63)
    if token_kind(tok_cfg) == "patch":
        patch = PatchConfig.of(tok_cfg)
        encoder = create_encoder(
            model_cfg["encoder"],
            group_size=patch.group_size,
            point_dim=patch.point_dim,
            n_positions=patch.n_tokens,
            **overrides,
        )
    else:
        encoder = create_encoder(model_cfg["encoder"], n_positions=n_positions(tok_cfg), **overrides)
    check_encoder_tokens(encoder, tok_cfg, where=where)
    return encoder


def check_encoder_tokens(encoder, tok_cfg: Mapping[str, Any], *, where: str) -> None:
    """A patch encoder reads patch tokens and a query encoder query tokens; anything else is a config error."""
    kind = token_kind(tok_cfg)
    if uses_patches(encoder) != (kind == "patch"):
        raise ValueError(token_mismatch(where, type(encoder).__name__, kind))


def token_mismatch(where: str, encoder_class: str, kind: str) -> str:
    return (
        f"{where} ({encoder_class}) cannot read tokens.kind {kind!r}: patch tokens need a point_patch_* encoder, "
        "query tokens a query_nepa_* one"
    )


def train_config(train_cfg: Mapping[str, Any], seed: int) -> TrainConfig:
    keys = (
        "steps",
        "batch_size",
        "grad_accum",
        "lr",
        "weight_decay",
        "warmup_steps",
        "min_lr_ratio",
        "clip_grad",
        "checkpoint_every",
        "num_workers",
    )
    return TrainConfig.from_dict({**{k: train_cfg[k] for k in keys}, "seed": seed})


def method_train_knobs(params: Mapping[str, Any]) -> dict[str, Any]:
    """The shared pretrain knobs with the method's own overrides (``entry.train``) on top."""
    return {**params["train"], **(params["entry"].get("train") or {})}


def run(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    *,
    weights: str | Path,
    encoder_json: str | Path,
    metrics_path: str | Path,
    log: logging.Logger,
) -> TrainResult:
    """Pretrain one method; exports the encoder only when the run finished (not when interrupted)."""
    seed, method, entry = int(params["seed"]), params["method"], params["entry"]
    objective_name = entry["objective"]
    knobs = dict(params.get("objective", {}))
    tok_cfg = {**params["tokens"], "drop_ray_prob": entry.get("drop_ray_prob", 0.0)}
    train_knobs = method_train_knobs(params)
    occ_grid = int(knobs.get("occ_grid", 0)) if objective_name == "cmae" else 0
    components = corpus_datasets(
        entry["corpus"],
        files,
        tok_cfg,
        seed=seed,
        occ_grid=occ_grid,
        two_views=objective_name == "cmae",
        augment=train_knobs.get("augment"),
    )
    for (ds, weight), part in zip(components, entry["corpus"]):
        log.info(
            "corpus %s/%s via %s: %d shapes, weight %.3f",
            part["dataset"],
            part["split"],
            part["backend"],
            len(ds),
            weight,
        )
    corpus = MixedCorpus(components, train_knobs["samples_per_epoch"], seed)
    encoder = build_encoder(params["model"], tok_cfg, seed=seed, key=method)
    objective = build_objective(objective_name, encoder, knobs)  # cmae's occ_grid sizes the dataset target too
    cfg = train_config(train_knobs, seed)
    data = EpochData(lambda epoch: EpochView(corpus, epoch), collate)
    result = train(
        objective,
        data,
        cfg,
        state_dir,
        config_hash=run_fingerprint(params, files),
        log=log,
        metrics_path=metrics_path,
        sinks=metrics_sinks(params, state_dir, log=log),
    )
    if result.interrupted or not result.is_main:
        return result
    causal = not BIDIRECTIONAL.get(objective_name, lambda cfg: False)(knobs)
    save_encoder(
        encoder,
        weights,
        encoder_json,
        extra={
            "method": method,
            "objective": objective_name,
            "causal": causal,
            "tokens": params["tokens"],
            "steps": result.steps,
            "final_loss": result.final_loss,
            "params_hash": cfg_hash(canonical_json(dict(params))),
            "git": git_describe(),
        },
    )
    return result


def stage(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    out: Mapping[str, str],
    log: logging.Logger,
) -> tuple[None, TrainResult]:
    """The pretrain_encoder job (``out``: weights, encoder_json, train_log). The train log grows in the state dir
    (a resume appends to it) and is published once the run finished; only rank 0 writes."""
    train_log = Path(state_dir) / "train_log.jsonl"
    result = run(
        params,
        files,
        state_dir,
        weights=out["weights"],
        encoder_json=out["encoder_json"],
        metrics_path=train_log,
        log=log,
    )
    if not result.interrupted and result.is_main:
        with atomic_path(out["train_log"]) as tmp:
            shutil.copyfile(train_log, tmp)
        log.info("done: %d steps, final loss %.5f", result.steps, result.final_loss or float("nan"))
    return None, result


def loader_workers(params: Mapping[str, Any]) -> int:
    return int(method_train_knobs(params)["num_workers"])
