"""The train_promptsg job: one (dataset, variant) of PromptSG, end to end on a trainable backbone's tokens.

Model: ``embed.promptsg.PromptSG`` (the backbone is trained at ``backbone_lr_scale`` x the head's rate; the text
tower stays frozen). The backbone and its items depend on the dataset's kind (``promptsg_items``): a pretrained 3D
encoder over the cache's token draws for shapes, the timm backbone of ``embed.image`` over the ingested pictures
for images. Data: P x K batches of the ttv ``train`` items (P classes, K items each; only classes with >= 2
training items are drawn), arranged per epoch from (seed, dataset, variant, epoch); each slot's draw (token draw or
picture augmentation) is keyed by item id, epoch and slot, so a resumed run sees exactly the batches of an
uninterrupted one. Losses (``loss_weights``): cross-entropy of the classifier (``linear`` or ``arcface``) on the
post-BN feature, batch-hard triplet on the pre-BN feature (``triplet_metric``, default euclidean as in the re-ID
"bag of tricks": token features share a large common component that a cosine on the pre-BN feature hardly sees),
SupCon on the post-BN feature, and with textual inversion the image-text SupCon of the pseudo prompt (``text``:
item view and prompt view of each item, positives = same class). Optimiser knobs: ``clip_grad`` (<= 0: off),
``cosine`` (off: constant rate after the warm-up), ``steps``, ``lr``, ``weight_decay``.

Evaluation (re-ID convention, as train_retrieval_head): the post-BN feature of one deterministic evaluation sample
per test item, cosine, Rank@1/5/10 and mAP averaged over the qg query/gallery splits; beside it the floors on the
same splits: the raw embeddings of the backbone before training (``shape_embeddings`` / ``image_embeddings``) and,
for shapes, the hand-crafted descriptor of the cached surface points. The last weights are kept (no selection on
test). Published: ``embed.promptsg.save_promptsg``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..device import model_device, to_device, to_host
from ..embed.backbones import build_text_backbone
from ..embed.promptsg import PromptSG, PromptSGConfig, save_promptsg, text_info
from ..embed.vectors import read_vectors
from ..eval.retrieval import qg_rank_map
from ..log import git_describe
from ..models.pseudo_prompt import DEFAULT_PLACEHOLDER, prepare_template
from ..objectives.base import Logs, Objective
from ..objectives.supcon import supcon_loss
from ..objectives.triplet import batch_hard_triplet_loss
from ..rng import rng_for, stable_hash
from ..train.checkpoint import run_fingerprint
from ..train.loop import EpochData, TrainConfig, TrainResult, train
from ..train.wandb_sink import metrics_sinks
from . import promptsg_items
from .finetune import class_names
from .retrieval_head import EMBEDDING_INPUTS, descriptor_floor, read_qg, vectors_of

STAGE = "train_promptsg"
LOSS_TERMS = ("ce", "triplet", "supcon", "text")


# ---- P x K epochs -----------------------------------------------------------------------------------------------


def pk_plan(labels: Sequence[int], p: int, k: int, n_batches: int, rng: np.random.Generator) -> np.ndarray:
    """Item indices of ``n_batches`` P x K batches, flat: each batch ``p`` distinct classes (of those with >= 2
    items), ``k`` items each (without replacement when the class has >= k items)."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    eligible = sorted(c for c, rows in by_class.items() if len(rows) >= 2)
    if len(eligible) < 2:
        raise ValueError(f"P x K batches need >= 2 classes with >= 2 training shapes; got {len(eligible)}")
    p = min(p, len(eligible))
    plan = []
    for _ in range(n_batches):
        for c in rng.permutation(eligible)[:p]:
            rows = by_class[int(c)]
            pick = rng.permutation(len(rows))[:k] if len(rows) >= k else rng.integers(0, len(rows), size=k)
            plan.extend(rows[j] for j in pick)
    return np.asarray(plan, dtype=np.int64)


class PKEpoch(Dataset):
    """One epoch of P x K batches over training items with ``item(index, epoch, draw)`` (sample i = slot i of the
    epoch's plan)."""

    def __init__(self, source: Any, plan: np.ndarray, epoch: int, k: int) -> None:
        self.source, self.plan, self.epoch, self.k = source, plan, int(epoch), int(k)

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        # the slot within its class group is the draw: a shape drawn twice in a batch gets two different draws
        return self.source.item(int(self.plan[i]), self.epoch, i % self.k)


# ---- objective --------------------------------------------------------------------------------------------------


class PromptSGObjective(Objective):
    """The weighted CE + triplet + SupCon (+ image-text SupCon) of a P x K batch."""

    def __init__(
        self,
        model: PromptSG,
        *,
        weights: Mapping[str, float],
        triplet_margin: float,
        supcon_temperature: float,
        backbone_lr_scale: float,
        triplet_metric: str = "euclidean",
    ) -> None:
        super().__init__()
        self.model = model
        self.encoder = model.backbone
        self.weights = {t: float(weights.get(t, 0.0)) for t in LOSS_TERMS}
        if model.inversion is None:
            self.weights["text"] = 0.0
        self.triplet_margin, self.supcon_temperature = float(triplet_margin), float(supcon_temperature)
        self.triplet_metric = str(triplet_metric)
        self.backbone_lr_scale = float(backbone_lr_scale)

    def lr_scale(self, name: str) -> float:
        return self.backbone_lr_scale if name.startswith("model.backbone.") else 1.0

    def terms(self, batch: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        y = batch["label"]
        out = self.model(batch)
        terms = {
            "ce": lambda: F.cross_entropy(self.model.logits(out["post"], y), y),
            "triplet": lambda: batch_hard_triplet_loss(
                out["pre"], y, margin=self.triplet_margin, metric=self.triplet_metric
            )[0],
            "supcon": lambda: supcon_loss(out["post"], y, temperature=self.supcon_temperature),
        }
        if self.model.inversion is not None:
            views = lambda: torch.stack([self.model.to_text(out["post"]), out["prompt"]], dim=1)  # noqa: E731
            terms["text"] = lambda: supcon_loss(views(), y, temperature=self.supcon_temperature)
        return {"out": out, "terms": terms}

    def forward(
        self, batch: Any, *, step: int, total_steps: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, Logs]:
        batch = to_device(batch, model_device(self.model))
        parts = self.terms(batch)
        total = parts["out"]["post"].new_zeros(())
        logs: Logs = {}
        for name, term in parts["terms"].items():
            if self.weights[name] == 0.0:
                with torch.no_grad():  # logged, no graph, no gradient
                    value = term()
            else:
                value = term()
                total = total + self.weights[name] * value
            logs[name] = value.detach()
        with torch.no_grad():
            logs["train_acc"] = (self.model.logits(parts["out"]["post"]).argmax(1) == batch["label"]).float().mean()
        return total, logs


# ---- the job ----------------------------------------------------------------------------------------------------


def settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The variant's knobs: the promptsg defaults with the variant's overrides on top."""
    return {**params["promptsg"], **(params.get("variant_settings") or {})}


def model_config(s: Mapping[str, Any], token_dim: int, text_backbone: Any, n_classes: int) -> PromptSGConfig:
    from ..models.pseudo_prompt import text_tower

    return PromptSGConfig(
        token_dim=token_dim,
        text_dim=int(text_backbone.dim),
        word_dim=int(text_tower(text_backbone.model).width),
        n_classes=n_classes,
        bnneck_dim=int(s["bnneck_dim"]),
        classifier=str(s["classifier"]),
        arcface_margin=float(s["arcface"]["margin"]),
        arcface_scale=float(s["arcface"]["scale"]),
        inversion=bool(s["textual_inversion"]),
        n_tokens=int(s["n_tokens"]),
        interaction=bool(s["interaction"]),
        interaction_layers=int(s["interaction_layers"]),
        interaction_heads=int(s["interaction_heads"]),
    )


def template_of(params: Mapping[str, Any], s: Mapping[str, Any]) -> str:
    return str(s["image_template"] if promptsg_items.kind_of(params) == "image" else s["template"])


def build(params: Mapping[str, Any], files: Mapping[str, Any], n_classes: int, key: str):
    """(model, source, text info): the backbone (``promptsg_items.backbone``) and the head, the frozen text tower
    attached; ``source`` describes the backbone's input (``tokens`` or ``image``) for the JSON."""
    s, seed = settings(params), int(params["seed"])
    backbone, source = promptsg_items.backbone(params, files, s, key)
    text_cfg = params["text"]
    text = build_text_backbone(
        text_cfg["model"],
        text_cfg.get("weights"),
        config_key="embed.text.weights",
        allow_random_init=bool(text_cfg.get("random_init", False)),
        seed=seed,
    )
    prompt = prepare_template(text.tokenizer, template_of(params, s), placeholder=DEFAULT_PLACEHOLDER)
    with torch.random.fork_rng(devices=[]):  # the head's init: a function of (seed, dataset, variant) only
        torch.manual_seed(stable_hash(f"{seed}|{STAGE}|{key}") % 2**63)
        model = PromptSG(backbone, model_config(s, backbone.dim, text, n_classes))
    model.attach_text(text, prompt)
    return model, source, text_info(text, text_cfg, prompt)


@torch.no_grad()
def embed_items(model: PromptSG, items: Any, collate_fn: Any, batch_size: int = 32) -> np.ndarray:
    """Post-BN features of every item's evaluation sample (BN in inference mode)."""
    model.eval()
    out = []
    for start in range(0, len(items), batch_size):
        batch = collate_fn([items.item(i) for i in range(start, min(start + batch_size, len(items)))])
        out.append(to_host(model.embed(to_device(batch, model_device(model)))))
    return np.concatenate(out).astype(np.float32)


def run(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    *,
    log: logging.Logger,
    extra_hooks: Sequence[Any] = (),
) -> tuple[dict[str, Any] | None, PromptSG, dict[str, Any], TrainResult]:
    """Train and evaluate; returns (metrics or None when interrupted, the model, the export description, result)."""
    s, seed = settings(params), int(params["seed"])
    key = f"{params['dataset']}|{params['variant']}"
    names = class_names(files["manifest"])
    model, source, text = build(params, files, len(names), key)
    qg = read_qg(files["qg"])
    data = promptsg_items.items(
        params, files, s, model.backbone, source, dict(zip(qg["shape_id"].astype(str), qg["label"].astype(int)))
    )
    k, batch = int(s["k"]), int(s["batch_size"])
    p = batch // k
    if p < 2:
        raise ValueError(f"promptsg.batch_size {batch} holds fewer than 2 classes of k = {k}")
    labels = data.train_labels
    n_batches = max(1, len(labels) // batch)  # a nominal epoch: about one pass over the training shapes
    plans = lambda epoch: pk_plan(labels, p, k, n_batches, rng_for(seed, STAGE, f"{key}|epoch{epoch}"))  # noqa: E731
    batch = len(plans(0)) // n_batches  # p may shrink to the drawable classes
    objective = PromptSGObjective(
        model,
        weights=s["loss_weights"],
        triplet_margin=float(s["triplet_margin"]),
        supcon_temperature=float(s["supcon_temperature"]),
        backbone_lr_scale=float(s["backbone_lr_scale"]),
        triplet_metric=str(s.get("triplet_metric", "euclidean")),
    )
    steps = int(s["steps"])
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch,
        lr=float(s["lr"]),
        weight_decay=float(s["weight_decay"]),
        warmup_steps=int(round(float(s["warmup_frac"]) * steps)),
        min_lr_ratio=0.01 if s["cosine"] else 1.0,
        clip_grad=float(s["clip_grad"]),
        checkpoint_every=int(s["checkpoint_every"]),
        log_every=max(1, steps // 20),
        seed=seed,
        num_workers=int(s.get("num_workers", 0)),
    )
    log.info(
        "%s: %d train shapes, %d classes, P x K = %d x %d, %d steps, backbone lr x %g, interaction %s, "
        "inversion %s, %s classifier",
        key,
        len(labels),
        len(set(labels)),
        batch // k,
        k,
        steps,
        float(s["backbone_lr_scale"]),
        s["interaction"],
        s["textual_inversion"],
        s["classifier"],
    )
    result = train(
        objective,
        EpochData(lambda epoch: PKEpoch(data.train, plans(epoch), epoch, k), data.collate),
        cfg,
        state_dir,
        config_hash=run_fingerprint(params, files),
        log=log,
        metrics_path=Path(state_dir) / "train_log.jsonl",
        hooks=list(extra_hooks),
        sinks=metrics_sinks(params, state_dir, log=log),
    )
    description = {
        "dataset": params["dataset"],
        "variant": params["variant"],
        "method": params["method"],
        "seed": seed,
        "class_names": names,
        "settings": s,
        **source,
        "kind": promptsg_items.kind_of(params),
        "text": text,
        "steps": result.steps,
    }
    if result.interrupted or not result.is_main:
        return None, model, description, result

    test_ids = data.test_ids
    qg = qg[qg["shape_id"].astype(str).isin(set(test_ids))]
    metrics = {
        "dataset": params["dataset"],
        "variant": params["variant"],
        "method": params["method"],
        "seed": seed,
        "embedding": "post-BN (BNNeck) feature, cosine",
        "settings": s,
        "p": batch // k,
        "k": k,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "kind": promptsg_items.kind_of(params),
        "train_shapes": len(labels),
        "qg_shapes": len(test_ids),
        "class_names": names,
        "head": qg_rank_map((test_ids, embed_items(model, data.test, data.collate)), None, qg),
    }
    for emb_key in EMBEDDING_INPUTS:  # the raw floor: the backbone's own embeddings before training
        if emb_key in files:
            emb_path = str(files[emb_key])
            raw_ids, raw_x = vectors_of(read_vectors(emb_path), test_ids, emb_path, "qg", log)
            metrics["raw"] = qg_rank_map((raw_ids, raw_x), None, qg[qg["shape_id"].astype(str).isin(set(raw_ids))])
    if "index" in files:  # the hand-crafted floor reads the cache's surface points: shapes only
        train_labels = dict(zip(data.train_ids, labels))
        metrics["descriptor_raw"] = descriptor_floor(files, seed, train_labels, qg, log)
    log.info(
        "%s: qg mAP %.4f, Rank@1 %.4f over %d splits%s",
        key,
        metrics["head"]["mAP"],
        metrics["head"]["rank@1"],
        metrics["head"]["n_splits"],
        f" (raw {metrics['raw']['mAP']:.4f})" if "raw" in metrics else "",
    )
    return metrics, model, description, result


REQUIRED_INPUTS = ("manifest", "ttv", "qg")


def stage(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    out: Mapping[str, str],
    log: logging.Logger,
) -> tuple[dict[str, Any] | None, TrainResult]:
    """The train_promptsg job: train, evaluate and publish the model into ``out["model_dir"]``."""
    metrics, model, description, result = run(params, files, state_dir, log=log)
    if metrics is not None:
        save_promptsg(model, {**description, "git": git_describe()}, out["model_dir"])
    return metrics, result
