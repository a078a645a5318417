"""One few-shot fine-tune job: (dataset, method, K, seed) -> metrics.

- Train set: the K-shot subset of the dataset's train split for this seed (K = 0: the whole train split).
- Validation: the few-shot ``val`` role, at most K shapes per class (K = 0: the ttv val split), so a K = 1 run never
  selects weights with more labels than its budget (reference weak spot 7). ``selection: last`` skips it.
- Test: the ttv test split, every shape on ``mc_draws_test`` deterministic token draws keyed by shape id, logits
  averaged over the draws.
- Tokens: the fine-tune counts (e.g. 256 points, no rays) inside the pretrained layout, so positions (and EOS)
  are those the encoder was pretrained with.
- Model: the exported pretrained encoder (run causally or not, as it was pretrained), or a fresh one for
  ``scratch``, seeded by (seed, dataset, method, K). The classification head's init (and the dropout stream after
  it) is seeded by the same key for every method: a loaded encoder must not leave it to torch's per-process seed.
The loop is the same resumable one as pretraining; the best-so-far validation state is part of its checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..data.selection import cached_rows, fewshot_labels, ttv_labels
from ..eval.classification import classification_report
from ..objectives import build_objective
from ..rng import stable_hash
from ..tokens.collate import collate
from ..tokens.corpus import EpochView, MixedCorpus
from ..tokens.dataset import ShapeTokenDataset
from ..train.export import load_encoder
from ..train.loop import EpochData, TrainConfig, TrainResult, train
from ..train.checkpoint import run_fingerprint
from ..train.wandb_sink import metrics_sinks
from .data import entries_of
from .pretrain import build_encoder


def token_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """Fine-tune token counts inside the pretrained layout (tokens.n_point / n_ray are the capacities)."""
    tokens, ft = params["tokens"], params["finetune"]
    return {**tokens, "n_point": ft["n_point"], "n_ray": ft["n_ray"], "drop_ray_prob": 0.0,
            "layout_n_point": tokens["n_point"], "layout_n_ray": tokens["n_ray"]}


def class_names(manifest_path: str | Path) -> list[str]:
    """Label names indexed by label, from the ingest manifest."""
    table = pd.read_parquet(manifest_path, columns=["label", "label_name"]).drop_duplicates()
    names = dict(zip(table["label"].astype(int), table["label_name"].astype(str)))
    return [names.get(i, f"class_{i}") for i in range(max(names) + 1)] if names else []


@torch.no_grad()
def predict(objective, dataset: ShapeTokenDataset, *, batch_size: int) -> np.ndarray:
    """(N, draws, C) logits: every shape of an eval-mode dataset on each of its deterministic draws."""
    was_training = objective.training
    objective.eval()
    n, draws = len(dataset), dataset.mc_draws
    out = None
    pairs = [(i, d) for i in range(n) for d in range(draws)]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        batch = collate([dataset.item(i, 0, d) for i, d in chunk])
        device = next(objective.parameters()).device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        logits = objective.predict_logits(batch).float().cpu().numpy()
        if out is None:
            out = np.zeros((n, draws, logits.shape[1]), dtype=np.float64)
        for (i, d), row in zip(chunk, logits):
            out[i, d] = row
    objective.train(was_training)
    return out


class BestOnValidation:
    """A loop hook: every ``every`` steps, accuracy on the validation set; keeps the best weights (strictly better
    wins, so ties keep the earlier step). Its state (best accuracy, step, weights) goes into the checkpoint."""

    def __init__(self, dataset: ShapeTokenDataset, *, every: int, batch_size: int, log: logging.Logger):
        self.dataset, self.every, self.batch_size, self.log = dataset, every, batch_size, log
        self.best_acc, self.best_step, self.best_state = -1.0, -1, None

    def __call__(self, step: int, objective) -> dict[str, float]:
        logits = predict(objective, self.dataset, batch_size=self.batch_size)
        labels = self.dataset.labels
        acc = float((logits.mean(axis=1).argmax(axis=1) == labels).mean())
        if acc > self.best_acc:
            self.best_acc, self.best_step = acc, step
            self.best_state = {k: v.detach().cpu().clone() for k, v in objective.state_dict().items()}
        self.log.info("step %d | val acc %.4f | best %.4f at step %d", step, acc, self.best_acc, self.best_step)
        return {"val_acc": acc}

    def state_dict(self) -> dict[str, Any]:
        return {"best_acc": self.best_acc, "best_step": self.best_step, "best_state": self.best_state or {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_acc, self.best_step = float(state["best_acc"]), int(state["best_step"])
        self.best_state = dict(state["best_state"]) or None


def run(params: Mapping[str, Any], files: Mapping[str, Any], state_dir: str | Path, *,
        log: logging.Logger) -> tuple[dict[str, Any] | None, TrainResult]:
    """Fine-tune and test; returns (metrics, result), metrics None when interrupted."""
    ft, seed, k, method = params["finetune"], int(params["seed"]), int(params["k"]), params["method"]
    key = f"{params['dataset']}|{method}|k{k}|s{seed}"
    tok = token_config(params)
    names = class_names(files["manifest"])
    index, shards = files["index"], files["shards"]
    split = {role: cached_rows(fewshot_labels(files["fewshot"], files["ttv"], k=k, seed=seed, role=role), index, shards)
             for role in ("train", "val")}
    split["test"] = cached_rows(ttv_labels(files["ttv"], "test"), index, shards)
    if not split["train"] or not split["test"]:
        raise ValueError(f"{key}: empty train ({len(split['train'])}) or test ({len(split['test'])}) set")
    log.info("%s: train %d, val %d, test %d shapes, %d classes", key, *(len(split[r]) for r in ("train", "val", "test")),
             len(names))
    backend = ft["backend"]
    train_ds = ShapeTokenDataset(entries_of(split["train"]), backend, tok, seed=seed, mode="train")
    eval_sets = {role: ShapeTokenDataset(entries_of(split[role]), backend, tok, seed=seed, mode="eval",
                                         mc_draws=ft[f"mc_draws_{'val' if role == 'val' else 'test'}"])
                 for role in ("val", "test") if split[role]}

    if method == "scratch":
        encoder, causal = build_encoder(params["model"], tok, seed=seed, key=key), True
    else:
        encoder = load_encoder(files["weights"], files["encoder_json"])
        causal = bool(_sidecar(files["encoder_json"]).get("extra", {}).get("causal", True))
    torch.manual_seed(stable_hash(f"{seed}|head|{key}") % 2**63)
    objective = build_objective("classify", encoder, {
        "n_classes": len(names), "pool": ft["pool"], "label_smoothing": ft["label_smoothing"],
        "freeze_encoder": ft["freeze_encoder"], "causal": causal})

    n_train = len(train_ds)
    batch = min(int(ft["batch_size"]), n_train)
    steps_per_epoch = n_train // batch
    steps = steps_per_epoch * int(ft["epochs"])
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=ft["lr"], weight_decay=ft["weight_decay"],
                      warmup_steps=int(round(ft["warmup_frac"] * steps)), min_lr_ratio=0.01, clip_grad=1.0,
                      checkpoint_every=max(1, steps_per_epoch * int(ft["eval_every"])), log_every=steps_per_epoch,
                      seed=seed, num_workers=ft["num_workers"])
    # reshuffled every epoch (a seeded permutation, no replacement)
    corpus = MixedCorpus([(train_ds, 1.0)], n_train, seed, replacement=False)
    hooks = []
    select = ft["selection"] == "val" and "val" in eval_sets
    if select:
        hooks.append(BestOnValidation(eval_sets["val"], every=steps_per_epoch * int(ft["eval_every"]),
                                      batch_size=64, log=log))
    result = train(objective, EpochData(lambda epoch: EpochView(corpus, epoch), collate), cfg, state_dir,
                   config_hash=run_fingerprint(params, files), log=log,
                   metrics_path=Path(state_dir) / "train_log.jsonl", hooks=hooks,
                   sinks=metrics_sinks(params, state_dir, log=log))
    if result.interrupted or not result.is_main:
        return None, result
    selected_step = result.steps
    if select and hooks[0].best_state is not None:
        objective.load_state_dict(hooks[0].best_state)
        selected_step = hooks[0].best_step
    metrics = {
        "dataset": params["dataset"], "method": method, "k": k, "seed": seed, "backend": backend,
        "class_names": names, "selection": ft["selection"] if select else "last", "selected_step": selected_step,
        "steps": result.steps, "train_shapes": len(split["train"]), "val_shapes": len(split["val"]),
        "test": classification_report(predict(objective, eval_sets["test"], batch_size=64),
                                       eval_sets["test"].labels, names),
    }
    if select:
        metrics["val_best_accuracy"] = hooks[0].best_acc
    return metrics, result


def _sidecar(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
