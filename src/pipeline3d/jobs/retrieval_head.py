"""PromptSG-style instance retrieval head over frozen embeddings: (dataset, method) -> head + metrics.

The vectors are a shape dataset's ``shape_embeddings`` (``method`` a pretrain method) or an image dataset's
``image_embeddings`` (``method`` the image backbone's name).

Model (``embed.retrieval_head.RetrievalModel``): Linear(in_dim -> neck_dim) then a BNNeck (re-ID "bag of tricks"):
- ArcFace over the post-BN feature (cross-entropy over the margin logits, all classes of the manifest);
- batch-hard triplet loss on the pre-BN feature, cosine distance (scale-free, like the cosine retrieval; so the
  config's margin is in units of 1 - cos);
- SupCon on the post-BN feature;
- optional textual inversion (``textual_inversion.enabled``): an MLP maps the post-BN feature to ``n_tokens``
  pseudo-word embeddings that fill the "{}" of the template inside the frozen open_clip text tower
  (``models.pseudo_prompt``); a Linear projects the post-BN feature to the text width, and the two views are tied
  by a two-view SupCon (shape view, pseudo-prompt view; positives = same class in either modality). SupCon rather
  than a diagonal InfoNCE because a PK batch holds K shapes per class: InfoNCE would treat the other K - 1 shapes
  of a class (and their prompts) as negatives and fight the ArcFace/triplet terms; SupCon counts them as positives.
The total is the weighted sum (``loss_weights``: ce, triplet, supcon; ``textual_inversion.weight``); every term is
logged even when its weight is 0, in which case it is computed without a graph and contributes no gradient.

Batches: P classes x K shapes (K = ``k``, default 4; P = batch_size // K), drawn in the objective from the
generator the train loop passes for the step, so a resumed run draws exactly the batches of an uninterrupted one.
Only classes with >= 2 training shapes are drawn (a triplet/SupCon anchor needs a positive); a class with fewer
than K shapes is sampled with replacement. Training uses the ttv ``train`` split; the last weights are kept.

Evaluation (PromptSG / re-ID convention): retrieval with the post-BN feature (cosine), CMC Rank@1/5/10 and mAP
averaged over the qg.parquet query/gallery splits of the test shapes; the raw embeddings (and the pre-BN feature)
on the same splits as baselines. With the dataset's cache among the inputs (``index``, ``shards``), also the
hand-crafted floor ``descriptor_raw``: shape-distribution descriptors (``eval.descriptor``, default knobs) of the
cached ``pc_xyz`` read through the ``pointcloud_noray`` view, standardised with the mean/std of the train shapes'
descriptors, cosine on the same splits: no embedding and no training.

Export: ``head.safetensors`` + ``head.json``, written by ``stage`` with ``save_retrieval_head``; the model, the
JSON's content and the loader are in ``pipeline3d.embed.retrieval_head`` (the library face:
``pipeline3d.load_retrieval_head``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.selection import cached_rows, ttv_labels
from ..device import model_device, to_host
from ..embed.retrieval_head import RetrievalModel, describe, save_retrieval_head
from ..embed.vectors import Embeddings, read_vectors
from ..eval import descriptor
from ..eval.retrieval import qg_rank_map
from ..io.tables import read_parquet
from ..log import git_describe
from ..objectives.base import Logs, Objective
from ..objectives.supcon import supcon_loss
from ..objectives.triplet import batch_hard_triplet_loss
from ..rng import rng_for
from ..train.checkpoint import run_fingerprint
from ..train.loop import TrainConfig, TrainResult, train
from ..train.wandb_sink import metrics_sinks
from .finetune import class_names

DEFAULT_K = 4
TRIPLET_METRIC = "cosine"
DESCRIPTOR_BACKEND = "pointcloud_noray"  # the descriptor floor sees the cached surface points only
# Defaults for knobs the config section may leave out (recorded in head.json / metrics.json as used).
DEFAULTS = {"k": DEFAULT_K, "weight_decay": 5e-4, "warmup_frac": 0.1, "checkpoint_every": 100}
LOSS_TERMS = ("ce", "triplet", "supcon")


# ---- PK batches -------------------------------------------------------------------------------------------------


def pk_indices(class_rows: Sequence[torch.Tensor], p: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Row indices of a P x K batch: ``p`` distinct classes, ``k`` rows each (without replacement when the class
    has >= k rows); all draws from ``generator``."""
    dev = generator.device
    chosen = torch.randperm(len(class_rows), generator=generator, device=dev)[:p].tolist()
    picks = []
    for c in chosen:
        rows = class_rows[c]
        n = rows.shape[0]
        pos = (
            torch.randperm(n, generator=generator, device=dev)[:k]
            if n >= k
            else torch.randint(n, (k,), generator=generator, device=dev)
        )
        picks.append(rows[pos.to(rows.device)])
    return torch.cat(picks)


class _StepSlots(Dataset):
    """The loop's data side: ``n`` placeholder samples per epoch (the objective draws the PK batch itself)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate_slots(samples: list[int]) -> torch.Tensor:
    return torch.tensor(samples, dtype=torch.long)


# ---- objective --------------------------------------------------------------------------------------------------


class RetrievalObjective(Objective):
    """The weighted ArcFace + triplet + SupCon (+ textual-inversion alignment) loss on PK batches of the training
    vectors (held as non-persistent buffers: they come from the inputs, not the checkpoint)."""

    def __init__(
        self,
        model: RetrievalModel,
        vectors: torch.Tensor,
        labels: torch.Tensor,
        *,
        k: int,
        p: int,
        weights: Mapping[str, float],
        triplet_margin: float,
        supcon_temperature: float,
        text_backbone: Any = None,
        prompt: Any = None,
        text_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.encoder = model
        self.register_buffer("vectors", vectors.float(), persistent=False)
        self.register_buffer("labels", labels.long(), persistent=False)
        rows_by_class = {}
        for row, label in enumerate(labels.tolist()):
            rows_by_class.setdefault(int(label), []).append(row)
        eligible = sorted(c for c, rows in rows_by_class.items() if len(rows) >= 2)
        if len(eligible) < 2:
            raise ValueError(f"PK batches need >= 2 classes with >= 2 training shapes; got {len(eligible)}")
        self.class_rows = [torch.tensor(rows_by_class[c], dtype=torch.long) for c in eligible]
        self.k, self.p = int(k), min(int(p), len(eligible))
        self.weights = {t: float(weights.get(t, 0.0)) for t in LOSS_TERMS}
        self.triplet_margin, self.supcon_temperature = float(triplet_margin), float(supcon_temperature)
        # The frozen text tower is not a submodule: not trained, not checkpointed, not exported (rebuilt from the
        # config), and the loop's train() does not flip it out of eval mode.
        self._text = text_backbone
        self._prompt = prompt
        self.text_weight = float(text_weight) if text_backbone is not None else 0.0

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = pk_indices(self.class_rows, self.p, self.k, generator).to(self.vectors.device)
        return self.vectors[idx], self.labels[idx]

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        pre, post = self.model(x)
        terms = {
            "ce": lambda: F.cross_entropy(self.model.arcface(post, y), y),
            "triplet": lambda: batch_hard_triplet_loss(pre, y, margin=self.triplet_margin, metric=TRIPLET_METRIC)[0],
            "supcon": lambda: supcon_loss(post, y, temperature=self.supcon_temperature),
        }
        weights = dict(self.weights)
        if self._text is not None:
            terms["text_align"] = lambda: self._text_alignment(post, y)
            weights["text_align"] = self.text_weight
        total = pre.new_zeros(())
        logs: Logs = {}
        for name, term in terms.items():
            if weights[name] == 0.0:
                with torch.no_grad():  # logged, but no graph and no gradient
                    value = term()
            else:
                value = term()
                total = total + weights[name] * value
            logs[name] = value.detach()
        with torch.no_grad():
            logs["train_acc"] = (self.model.arcface(post).argmax(1) == y).float().mean()
        return total, logs

    def _text_alignment(self, post: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from ..models.pseudo_prompt import encode_with_pseudo_tokens

        tower_device = next(self._text.model.parameters()).device
        if tower_device != post.device:
            self._text.model.to(post.device)
        text = encode_with_pseudo_tokens(self._text, self._prompt, self.model.inversion(post))
        views = torch.stack([self.model.to_text(post), text], dim=1)  # (N, 2, text_dim): shape view, prompt view
        return supcon_loss(views, y, temperature=self.supcon_temperature)

    def forward(
        self, batch: Any, *, step: int, total_steps: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, Logs]:
        x, y = self.batch(generator)
        return self.losses(x, y)


# ---- inputs -----------------------------------------------------------------------------------------------------


def vectors_of(
    emb: Embeddings, ids: Sequence[str], path: str, what: str, log: logging.Logger
) -> tuple[list[str], np.ndarray]:
    """The ids (in the given order) that have a vector, and their vectors; warns about the rest."""
    row = {sid: i for i, sid in enumerate(emb.ids)}
    have = [s for s in ids if s in row]
    if len(have) < len(ids):
        missing = [s for s in ids if s not in row]
        log.warning(
            "%s: %d of %d %s shapes have no vector (e.g. %s); they are left out",
            path,
            len(missing),
            len(ids),
            what,
            missing[:3],
        )
    return have, emb.vectors[[row[s] for s in have]] if have else np.zeros((0, emb.dim), np.float32)


def read_qg(path: str) -> pd.DataFrame:
    try:
        qg = read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the query/gallery table: {exc}") from exc
    missing = {"split_id", "shape_id", "label", "role"} - set(qg.columns)
    if missing:
        raise ValueError(f"{path}: lacks columns {sorted(missing)}")
    return qg


def settings(head: Mapping[str, Any]) -> dict[str, Any]:
    """The head section with the defaults of the optional knobs filled in."""
    return {**DEFAULTS, **head}


def _text_setup(params: Mapping[str, Any], log: logging.Logger) -> tuple[Any, Any, dict[str, Any]]:
    """Build the frozen text tower and the tokenised template (only when textual inversion is on)."""
    from ..embed.backbones import build_text_backbone
    from ..models.pseudo_prompt import DEFAULT_PLACEHOLDER, prepare_template, text_tower

    text, ti = params["text"], params["head"]["textual_inversion"]
    backbone = build_text_backbone(
        text["model"],
        text.get("weights"),
        config_key="embed.text.weights",
        allow_random_init=bool(text.get("random_init", False)),
        seed=int(params["seed"]),
    )
    tower = text_tower(backbone.model)  # refuses unsupported layouts before any training
    prompt = prepare_template(
        backbone.tokenizer, ti["template"], placeholder=ti.get("placeholder", DEFAULT_PLACEHOLDER)
    )
    info = {
        "name": text.get("name", text["model"]),
        "model": text["model"],
        "weights_sha256": backbone.weights.sha256,
        "weights_source": backbone.weights.source,
        "dim": backbone.dim,
        "token_dim": tower.width,
        "template": ti["template"],
        "placeholder": prompt.placeholder,
        "n_tokens": int(ti["n_tokens"]),
    }
    log.info(
        "textual inversion: %d pseudo token(s) in %r through text tower %s (dim %d, token width %d)",
        info["n_tokens"],
        ti["template"],
        info["name"],
        backbone.dim,
        tower.width,
    )
    return backbone, prompt, info


# ---- the job ----------------------------------------------------------------------------------------------------


def run(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    *,
    log: logging.Logger,
    extra_hooks: Sequence[Any] = (),
) -> tuple[dict[str, Any] | None, RetrievalModel, dict[str, Any], TrainResult]:
    """Train and evaluate; returns (metrics or None when interrupted, the model, the export description, result)."""
    head = settings(params["head"])
    seed, key = int(params["seed"]), f"{params['dataset']}|{params['method']}"
    emb_path = embeddings_input(files)
    emb = read_vectors(emb_path)
    names = class_names(files["manifest"])
    train_labels = ttv_labels(files["ttv"], "train")
    train_ids, train_x = vectors_of(emb, sorted(train_labels), emb_path, "train", log)
    if not train_ids:
        raise ValueError(f"{emb_path}: none of the {len(train_labels)} ttv train shapes has a vector")
    y = [train_labels[s] for s in train_ids]
    if max(y) >= len(names):
        raise ValueError(f"{files['ttv']}: label {max(y)} but {files['manifest']} names {len(names)} classes")

    ti = head["textual_inversion"]
    text_backbone = prompt = text_info = None
    if ti.get("enabled", False):
        text_backbone, prompt, text_info = _text_setup(params, log)

    k = int(head["k"])
    p = int(head["batch_size"]) // k
    if p < 2:
        raise ValueError(f"retrieval_head.batch_size {head['batch_size']} holds fewer than 2 classes of k = {k}")
    with torch.random.fork_rng(devices=[]):  # the head's init: a function of (seed, dataset, method) only
        torch.manual_seed(int(rng_for(seed, "train_retrieval_head", key).integers(0, 2**63 - 1)))
        model = RetrievalModel(
            emb.dim,
            int(head["neck_dim"]),
            len(names),
            margin=float(head["arcface"]["margin"]),
            scale=float(head["arcface"]["scale"]),
            token_dim=text_info["token_dim"] if text_info else None,
            text_dim=text_info["dim"] if text_info else None,
            n_tokens=int(ti.get("n_tokens", 1)),
        )
    objective = RetrievalObjective(
        model,
        torch.from_numpy(np.ascontiguousarray(train_x)),
        torch.tensor(y),
        k=k,
        p=p,
        weights=head["loss_weights"],
        triplet_margin=float(head["triplet_margin"]),
        supcon_temperature=float(head["supcon_temperature"]),
        text_backbone=text_backbone,
        prompt=prompt,
        text_weight=float(ti.get("weight", 0.0)),
    )
    batch = objective.p * k
    steps = int(head["steps"])
    log.info(
        "%s: %d train shapes with vectors (%d classes, %d drawable), PK batches %d x %d, %d steps",
        key,
        len(train_ids),
        len(set(y)),
        len(objective.class_rows),
        objective.p,
        k,
        steps,
    )
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch,
        lr=float(head["lr"]),
        weight_decay=float(head["weight_decay"]),
        warmup_steps=int(round(float(head["warmup_frac"]) * steps)),
        min_lr_ratio=0.01,
        clip_grad=5.0,
        checkpoint_every=int(head["checkpoint_every"]),
        log_every=max(1, steps // 20),
        seed=seed,
    )
    epoch_batches = max(1, len(train_ids) // batch)  # a nominal epoch: about one pass over the training shapes
    result = train(
        objective,
        _EpochSlots(epoch_batches * batch),
        cfg,
        state_dir,
        config_hash=run_fingerprint(params, files),
        log=log,
        metrics_path=Path(state_dir) / "train_log.jsonl",
        hooks=list(extra_hooks),
        sinks=metrics_sinks(params, state_dir, log=log),
    )
    description = describe(model, names, emb, params, head, text_info, steps=result.steps)
    if result.interrupted or not result.is_main:
        return None, model, description, result

    qg = read_qg(files["qg"])
    test_ids, test_x = vectors_of(emb, sorted(set(qg["shape_id"].astype(str))), emb_path, "qg", log)
    if not test_ids:
        raise ValueError(f"{emb_path}: none of the qg shapes of {files['qg']} has a vector")
    qg = qg[qg["shape_id"].astype(str).isin(set(test_ids))]
    model.eval()
    with torch.no_grad():
        pre, post = model(torch.from_numpy(np.ascontiguousarray(test_x)).to(model_device(model)))
    pre, post = to_host(pre), to_host(post)
    metrics = {
        "dataset": params["dataset"],
        "method": params["method"],
        "seed": seed,
        "embedding": "post-BN (BNNeck) feature, cosine",
        "settings": head,
        "k": k,
        "p": objective.p,
        "triplet_metric": TRIPLET_METRIC,
        "class_names": names,
        "steps": result.steps,
        "train_shapes": len(train_ids),
        "qg_shapes": len(test_ids),
        "final_loss": result.final_loss,
        "head": qg_rank_map((test_ids, post), None, qg),
        "head_pre_bn": qg_rank_map((test_ids, pre), None, qg),
        "raw": qg_rank_map((test_ids, test_x), None, qg),
        "input": description["input"],
    }
    if text_info:
        metrics["text"] = text_info
    if "index" in files and "shards" in files:
        metrics["descriptor_raw"] = descriptor_floor(files, seed, {s: train_labels[s] for s in train_ids}, qg, log)
    log.info(
        "%s: qg mAP %.4f (raw %.4f), Rank@1 %.4f (raw %.4f) over %d splits",
        key,
        metrics["head"]["mAP"],
        metrics["raw"]["mAP"],
        metrics["head"]["rank@1"],
        metrics["raw"]["rank@1"],
        metrics["head"]["n_splits"],
    )
    return metrics, model, description, result


REQUIRED_INPUTS = ("manifest", "ttv", "qg")
EMBEDDING_INPUTS = ("shape_embeddings", "image_embeddings")  # a shape dataset's or an image dataset's vectors


def embeddings_input(files: Mapping[str, Any]) -> str:
    """The path of the frozen vectors the head trains on: exactly one of ``EMBEDDING_INPUTS``."""
    named = [key for key in EMBEDDING_INPUTS if key in files]
    if len(named) != 1:
        raise ValueError(f"--inputs must name exactly one of {EMBEDDING_INPUTS}; it names {named or 'none'}")
    return str(files[named[0]])


def stage(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    out: Mapping[str, str],
    log: logging.Logger,
) -> tuple[dict[str, Any] | None, TrainResult]:
    """The train_retrieval_head job: train, evaluate and publish the head (``out``: head, head_json, metrics)."""
    metrics, model, description, result = run(params, files, state_dir, log=log)
    if metrics is not None:
        save_retrieval_head(model, {**description, "git": git_describe()}, out["head"], out["head_json"])
    return metrics, result


def descriptor_floor(
    files: Mapping[str, Any], seed: int, train_labels: Mapping[str, int], qg: pd.DataFrame, log: logging.Logger
) -> dict[str, Any]:
    """``qg_rank_map`` of the standardised shape-distribution descriptors of the qg shapes (mean/std of the
    ``train_labels`` shapes' descriptors): the no-learning floor of the retrieval table."""
    qg_labels = dict(zip(qg["shape_id"].astype(str), qg["label"].astype(int)))
    rows = {
        role: cached_rows(dict(labels), files["index"], files["shards"])
        for role, labels in (("train", train_labels), ("qg", qg_labels))
    }
    x = {role: descriptor.descriptor_features(r, seed=seed, backend=DESCRIPTOR_BACKEND) for role, r in rows.items()}
    mean, std = descriptor.standardiser(x["train"])
    result = qg_rank_map(([r.shape_id for r in rows["qg"]], (x["qg"] - mean) / std), None, qg)
    log.info(
        "descriptor floor: qg mAP %.4f, Rank@1 %.4f (%d features, standardised on %d train shapes)",
        result["mAP"],
        result["rank@1"],
        x["qg"].shape[1],
        len(rows["train"]),
    )
    return {
        **result,
        "descriptor": {
            **descriptor.DEFAULTS,
            "backend": DESCRIPTOR_BACKEND,
            "metric": "cosine",
            "standardised_on": "train",
            "features": int(x["qg"].shape[1]),
        },
    }


class _EpochSlots:
    """``EpochSource`` of placeholder samples (same length every epoch)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def make_epoch(self, epoch: int) -> Dataset:
        return _StepSlots(self.n)

    def collate(self, samples: list[int]) -> torch.Tensor:
        return _collate_slots(samples)
