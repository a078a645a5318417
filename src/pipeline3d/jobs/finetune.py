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
import torch

from ..data.selection import cached_rows, fewshot_labels, ttv_labels
from ..device import model_device, to_device, to_host
from ..eval.classification import average_draws, classification_report
from ..finetune_rows import DESCRIPTOR
from ..io.tables import read_parquet
from ..objectives import build_objective
from ..rng import stable_hash
from ..tokens.collate import collate
from ..tokens.corpus import EpochView, MixedCorpus
from ..tokens.dataset import ShapeTokenDataset
from ..tokens.eval_batches import eval_batches
from ..tokens.patches import token_kind
from ..train.checkpoint import run_fingerprint
from ..train.export import load_encoder
from ..train.loop import EpochData, TrainConfig, TrainResult, train
from ..train.wandb_sink import metrics_sinks
from .data import entries_of
from .pretrain import build_encoder, check_encoder_tokens


def token_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """Fine-tune token counts inside the pretrained layout (tokens.n_point / n_ray are the capacities)."""
    tokens, ft = params["tokens"], params["finetune"]
    return {
        **tokens,
        "n_point": ft["n_point"],
        "n_ray": ft["n_ray"],
        "drop_ray_prob": 0.0,
        "layout_n_point": tokens["n_point"],
        "layout_n_ray": tokens["n_ray"],
    }


def class_names(manifest_path: str | Path) -> list[str]:
    """Label names indexed by label, from the ingest manifest."""
    table = read_parquet(manifest_path, columns=["label", "label_name"]).drop_duplicates()
    names = dict(zip(table["label"].astype(int), table["label_name"].astype(str)))
    return [names.get(i, f"class_{i}") for i in range(max(names) + 1)] if names else []


@torch.no_grad()
def predict(objective, dataset: ShapeTokenDataset, *, batch_size: int, num_workers: int = 0) -> np.ndarray:
    """(N, draws, C) logits: every shape of an eval-mode dataset on each of its deterministic draws (tokenized by
    ``num_workers`` DataLoader workers; the logits do not depend on them)."""
    was_training = objective.training
    objective.eval()
    device = model_device(objective)
    out = None
    for chunk, batch in eval_batches(dataset, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda"):
        logits = to_host(objective.predict_logits(to_device(batch, device)).float(), np.float32)
        if out is None:
            out = np.zeros((len(dataset), dataset.mc_draws, logits.shape[1]), dtype=np.float64)
        for (i, d), row in zip(chunk, logits):
            out[i, d] = row
    objective.train(was_training)
    return out


class BestOnValidation:
    """A loop hook: every ``every`` steps, accuracy and cross-entropy on the validation set; keeps the best weights
    by (accuracy, then lower cross-entropy), strictly better winning. K-shot validation sets are tiny (a few shapes at
    small K), so accuracy alone ties often, and a tie kept the earliest, least trained weights; the loss tells them
    apart. Its state (best accuracy, loss, step, weights) goes into the checkpoint."""

    def __init__(
        self, dataset: ShapeTokenDataset, *, every: int, batch_size: int, log: logging.Logger, num_workers: int = 0
    ):
        self.dataset, self.every, self.batch_size, self.log = dataset, every, batch_size, log
        self.num_workers = num_workers
        self.best_acc, self.best_loss, self.best_step, self.best_state = -1.0, float("inf"), -1, None

    def __call__(self, step: int, objective) -> dict[str, float]:
        logits = predict(objective, self.dataset, batch_size=self.batch_size, num_workers=self.num_workers)
        labels = self.dataset.labels
        probs = softmax(average_draws(logits))  # the draws' mean logits, as the test reads them
        acc = float((probs.argmax(axis=1) == labels).mean())
        loss = float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)).mean())
        if (acc, -loss) > (self.best_acc, -self.best_loss):
            self.best_acc, self.best_loss, self.best_step = acc, loss, step
            self.best_state = {k: v.detach().cpu().clone() for k, v in objective.state_dict().items()}
        self.log.info(
            "step %d | val acc %.4f, loss %.4f | best %.4f at step %d", step, acc, loss, self.best_acc, self.best_step
        )
        return {"val_acc": acc, "val_loss": loss}

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_acc": self.best_acc,
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "best_state": self.best_state or {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_acc, self.best_step = float(state["best_acc"]), int(state["best_step"])
        self.best_loss = float(state.get("best_loss", float("inf")))
        self.best_state = dict(state["best_state"]) or None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fewshot_split(params: Mapping[str, Any], files: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """shape id -> label per role (train, val, test) of the per-class K-shot protocol (K = 0: full splits)."""
    k, seed = int(params["k"]), int(params["seed"])
    labels = {
        role: fewshot_labels(files["fewshot"], files["ttv"], k=k, seed=seed, role=role) for role in ("train", "val")
    }
    labels["test"] = ttv_labels(files["ttv"], "test")
    return labels


def run(
    params: Mapping[str, Any], files: Mapping[str, Any], state_dir: str | Path, *, log: logging.Logger
) -> tuple[dict[str, Any] | None, TrainResult]:
    """Fine-tune and test on the per-class K-shot split; returns (metrics, result), metrics None when interrupted."""
    return run_with_split(
        params, files, fewshot_split(params, files), class_names(files["manifest"]), state_dir, log=log
    )


def run_with_split(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    labels: Mapping[str, Mapping[str, int]],
    names: list[str],
    state_dir: str | Path,
    *,
    log: logging.Logger,
) -> tuple[dict[str, Any] | None, TrainResult]:
    """Fine-tune on ``labels["train"]``, select on ``labels["val"]`` (may be empty), test on ``labels["test"]``.

    ``labels`` maps role -> {shape id: label in 0..len(names)-1}; ``params`` holds ``finetune``, ``tokens``,
    ``model``, ``seed``, ``k``, ``method``, ``dataset`` (and an optional ``key`` naming the job in its seeds).
    """
    ft, seed, k, method = params["finetune"], int(params["seed"]), int(params["k"]), params["method"]
    key = params.get("key") or f"{params['dataset']}|{method}|k{k}|s{seed}"
    tok = token_config(params)
    index, shards = files["index"], files["shards"]
    split = {role: cached_rows(dict(labels.get(role, {})), index, shards) for role in ("train", "val", "test")}
    if not split["train"] or not split["test"]:
        raise ValueError(f"{key}: empty train ({len(split['train'])}) or test ({len(split['test'])}) set")
    log.info(
        "%s: train %d, val %d, test %d shapes, %d classes",
        key,
        *(len(split[r]) for r in ("train", "val", "test")),
        len(names),
    )
    backend = ft["backend"]
    encoder, causal, tok = job_encoder(params, files, seed=seed, key=key)
    train_ds = ShapeTokenDataset(
        entries_of(split["train"]), backend, tok, seed=seed, mode="train", augment=ft.get("augment")
    )
    eval_sets = {
        role: ShapeTokenDataset(
            entries_of(split[role]),
            backend,
            tok,
            seed=seed,
            mode="eval",
            mc_draws=ft[f"mc_draws_{'val' if role == 'val' else 'test'}"],
        )
        for role in ("val", "test")
        if split[role]
    }
    torch.manual_seed(stable_hash(f"{seed}|head|{key}") % 2**63)
    objective = build_objective(
        "classify",
        encoder,
        {
            "n_classes": len(names),
            "pool": ft["pool"],
            "label_smoothing": ft["label_smoothing"],
            "freeze_encoder": frozen(params),
            "causal": causal,
            "layer_decay": float(ft.get("layer_decay", 1.0)),
            "head_dropout": float(ft.get("head_dropout", 0.0)),
            "probe_frac": float(ft.get("probe_frac", 0.0)),
        },
    )

    n_train = len(train_ds)
    batch = min(int(ft["batch_size"]), n_train)
    steps, steps_per_epoch = step_budget(ft, n_train, batch)
    every = max(1, min(int(ft["eval_every"]), steps))
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch,
        lr=ft["lr"],
        weight_decay=ft["weight_decay"],
        warmup_steps=int(round(ft["warmup_frac"] * steps)),
        min_lr_ratio=0.01,
        clip_grad=1.0,
        checkpoint_every=every,
        log_every=max(1, min(steps_per_epoch, every)),
        seed=seed,
        num_workers=ft["num_workers"],
    )
    workers = int(ft["num_workers"])  # the rule's CPUs cover them; evaluation tokenizes in them as training does
    # reshuffled every epoch (a seeded permutation, no replacement)
    corpus = MixedCorpus([(train_ds, 1.0)], n_train, seed, replacement=False)
    hooks = []
    select = ft["selection"] == "val" and "val" in eval_sets
    if select:
        hooks.append(BestOnValidation(eval_sets["val"], every=every, batch_size=64, log=log, num_workers=workers))
    result = train(
        objective,
        EpochData(lambda epoch: EpochView(corpus, epoch), collate),
        cfg,
        state_dir,
        config_hash=run_fingerprint(params, files),
        log=log,
        metrics_path=Path(state_dir) / "train_log.jsonl",
        hooks=hooks,
        sinks=metrics_sinks(params, state_dir, log=log),
    )
    if result.interrupted or not result.is_main:
        return None, result
    # how well the weights fit their own training shapes (one un-augmented eval draw each), last and selected: an
    # underfitting run shows here, not only as a low test accuracy
    fit = ShapeTokenDataset(entries_of(split["train"]), backend, tok, seed=seed, mode="eval", mc_draws=1)
    fit_last = fit_accuracy(objective, fit, workers)
    selected_step = result.steps
    if select and hooks[0].best_state is not None:
        objective.load_state_dict(hooks[0].best_state)
        selected_step = hooks[0].best_step
    metrics = {
        "dataset": params["dataset"],
        "method": method,
        "k": k,
        "seed": seed,
        "backend": backend,
        "class_names": names,
        "selection": ft["selection"] if select else "last",
        "selected_step": selected_step,
        "steps": result.steps,
        "train_shapes": len(split["train"]),
        "val_shapes": len(split["val"]),
        "test": classification_report(
            predict(objective, eval_sets["test"], batch_size=64, num_workers=workers), eval_sets["test"].labels, names
        ),
    }
    if select:
        metrics["val_best_accuracy"] = hooks[0].best_acc
    metrics["train_accuracy"] = fit_accuracy(objective, fit, workers)
    metrics["train_accuracy_last"] = fit_last
    return metrics, result


def fit_accuracy(objective, dataset: ShapeTokenDataset, num_workers: int = 0) -> float:
    """Accuracy on a (training) set's first eval draw."""
    logits = predict(objective, dataset, batch_size=64, num_workers=num_workers)
    return float((logits[:, 0].argmax(1) == dataset.labels).mean())


def frozen(params: Mapping[str, Any]) -> bool:
    """Linear probe or full fine-tuning: the row's own setting (the workflow's), else finetune.freeze_encoder."""
    if "freeze_encoder" in params:
        return bool(params["freeze_encoder"])
    return bool(params["finetune"].get("freeze_encoder", False))


def step_budget(ft: Mapping[str, Any], n_train: int, batch: int) -> tuple[int, int]:
    """(optimiser steps, steps per epoch): ``finetune.steps`` for every job (a K = 1 job trains as long as a full
    one), or ``epochs`` passes when that is more (large train sets)."""
    steps_per_epoch = max(1, n_train // batch)
    steps = int(ft["steps"])
    if ft.get("epochs"):
        steps = max(steps, steps_per_epoch * int(ft["epochs"]))
    return steps, steps_per_epoch


def job_encoder(params: Mapping[str, Any], files: Mapping[str, Any], *, seed: int, key: str):
    """(encoder, causal, token config) of a job: the exported pretrained encoder (``files["weights"]``) read with the
    tokens it was pretrained on, or (``row_kind`` scratch) a fresh one of ``params["model"]`` / ``params["tokens"]``.

    Query tokens keep the fine-tune counts (``finetune.n_point`` / ``n_ray``) inside the pretrained layout; patch
    tokens are drawn exactly as in pretraining. A fresh query encoder runs causally (as NEPA pretrains), a fresh
    patch encoder both ways (as the Point-MAE family fine-tunes).
    """
    kind = params.get("row_kind") or ("scratch" if params["method"] == "scratch" else "pretrained")
    if kind != "scratch":
        encoder = load_encoder(files["weights"], files["encoder_json"])
        extra = _sidecar(files["encoder_json"]).get("extra", {})
        tokens = dict(extra.get("tokens") or params["tokens"])
        causal = bool(extra.get("causal", True))
        tok = token_config({**params, "tokens": tokens})
    else:
        tok = token_config(params)
        encoder = build_encoder(params["model"], tok, seed=seed, key=key)
        causal = token_kind(tok) == "query"
    check_encoder_tokens(encoder, tok, where=f"the encoder of {key}")
    return encoder, causal, tok


def _sidecar(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def stage(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    out: Mapping[str, str],
    log: logging.Logger,
) -> tuple[dict[str, Any] | None, TrainResult | None]:
    """The finetune_classifier job: a fine-tune, or the descriptor floor (no training loop, nothing to resume)."""
    if params.get("row_kind") == DESCRIPTOR:
        from . import descriptor  # imported here: the floor's dependencies are not the network's

        return descriptor.run(params, files, log=log), None
    return run(params, files, state_dir, log=log)


def loader_workers(params: Mapping[str, Any]) -> int:
    """DataLoader workers of a fine-tune job (its CPUs beyond torch's compute threads)."""
    return int(params.get("finetune", {}).get("num_workers", 0))


def summary(metrics: Mapping[str, Any]) -> str:
    test = metrics["test"]
    return (
        f"test accuracy {test['accuracy']:.4f} (mean class accuracy {test['mean_class_accuracy']:.4f}) over "
        f"{test['n']} shapes"
    )
