"""The text-3D alignment job (HSE text-to-3D style): one K-fold training job (the submission is ``submit_text3d``).

Training (``run``), for (dataset, method, fold f):
- Shapes: the frozen encoder's precomputed vectors (embed_shape's parquet). Train on every K-fold fold but f,
  validate on fold f.
- Texts: captions from the caption dataset's manifest (or class prompts, see ``embed.captions``), tokenised once.
- Pairs: every epoch visits each training shape once, in an order keyed by (seed, epoch, shape id), with one of
  its captions drawn from ``rng_for(seed, ..., shape id + epoch)``; so several captions per shape are all seen
  over the epochs, and a batch never holds the same shape twice.
- Model: ``TextShapeAlignment`` (projection MLP + the text tower's last N blocks + learnable temperature); the
  projection and the temperature learn at ``head_lr``, the text blocks at ``lr``.
- Selection: every ``eval_every`` steps (and before the first), text->mesh and mesh->text Recall@1/5/10 on the
  validation fold; the best mean(t2m R@5, m2t R@5) wins (strictly better, so ties keep the earlier step). The
  loop is the resumable one; the best-so-far state is part of its checkpoint.

Optional align_text3d keys (defaults): layers (2) and dropout (0.0) of the projection MLP, weight_decay (0.01),
warmup_frac (0.05), max_scale (100: the temperature's floor is 1 / max_scale), checkpoint_every (eval_every).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..device import model_device, to_host
from ..embed.backbones import TextBackbone, build_text_backbone
from ..embed.captions import CaptionTable, class_prompts, manifest_captions
from ..embed.text3d_alignment import save_alignment
from ..embed.vectors import read_vectors
from ..eval.retrieval import recall_at_k
from ..io.tables import read_parquet
from ..log import git_describe
from ..models.heads import ProjectionHead
from ..models.text_tower import PartiallyFrozenTextTower
from ..objectives.infonce import SymmetricInfoNCE
from ..objectives.text3d_alignment import TextShapeAlignment
from ..rng import rng_for, stable_hash
from ..train.checkpoint import run_fingerprint
from ..train.loop import EpochData, TrainConfig, TrainResult, train
from ..train.wandb_sink import metrics_sinks

STAGE = "align_text3d"
VAL_KS = (1, 5, 10)
TEST_KS = (1, 3, 5, 10)
SELECT_K = 5  # selection score: mean of text->mesh and mesh->text Recall@5
EVAL_BATCH = 64


# ---- inputs -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeSet:
    """Shapes sorted by id with their frozen-encoder vectors and labels."""

    ids: list[str]
    vectors: np.ndarray  # float32 (N, D)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.ids)


def shape_set(embeddings_path: str | Path, table: pd.DataFrame) -> ShapeSet:
    """The vectors of the shapes in ``table`` (shape_id, label), sorted by id; a shape without one is an error."""
    emb = read_vectors(embeddings_path)
    row = {sid: r for r, sid in enumerate(emb.ids)}
    table = table.sort_values("shape_id", kind="stable")
    ids = table["shape_id"].astype(str).tolist()
    missing = [s for s in ids if s not in row]
    if missing:
        raise ValueError(
            f"{embeddings_path}: no vector for {len(missing)} of {len(ids)} shapes, e.g. {missing[:3]} "
            "(embeddings of another dataset or an older split?)"
        )
    vectors = np.ascontiguousarray(emb.vectors[[row[s] for s in ids]], dtype=np.float32)
    return ShapeSet(ids, vectors, table["label"].to_numpy(dtype=np.int64))


def _class_names(manifest_path: str | Path) -> list[str]:
    table = read_parquet(manifest_path, columns=["label", "label_name"]).drop_duplicates()
    names = dict(zip(table["label"].astype(int), table["label_name"].astype(str)))
    return [names.get(i, f"class_{i}") for i in range(max(names) + 1)] if names else []


def load_captions(params: Mapping[str, Any], files: Mapping[str, Any]) -> CaptionTable:
    """Captions (align.captions set) or class prompts (embed.text.templates) for the mesh dataset's shapes."""
    manifest = read_parquet(files["manifest"], columns=["shape_id", "label"])
    labels = dict(zip(manifest["shape_id"].astype(str), manifest["label"].astype(int)))
    spec = params["align"].get("captions")
    if spec:
        path = files.get("captions_manifest")
        if not path:
            raise ValueError(
                f"align_text3d.captions takes captions from dataset {spec.get('dataset')!r}, but no "
                "captions_manifest input was given"
            )
        return manifest_captions(
            path,
            field=spec.get("field", "caption"),
            shape_field=spec.get("shape_field", "shape"),
            mesh_dataset=params["dataset"],
            shape_labels=labels,
        )
    templates = params["text"].get("templates") or []
    return class_prompts(_class_names(files["manifest"]), list(labels.values()), templates)


def text_backbone(text_cfg: Mapping[str, Any], seed: int) -> TextBackbone:
    return build_text_backbone(
        text_cfg["model"],
        text_cfg.get("weights"),
        config_key="embed.text.weights",
        allow_random_init=bool(text_cfg.get("random_init", False)),
        seed=seed,
    )


def tokenize(backbone: TextBackbone, texts: Sequence[str]) -> tuple[torch.Tensor, np.ndarray]:
    """(distinct texts' tokens (T, ctx), index (C,) of each text's row): each distinct text tokenised once."""
    distinct = list(dict.fromkeys(texts))
    where = {t: i for i, t in enumerate(distinct)}
    tokens = backbone.tokenizer(distinct) if distinct else torch.zeros(0, backbone.context_length, dtype=torch.long)
    return tokens, np.array([where[t] for t in texts], dtype=np.int64)


# ---- model --------------------------------------------------------------------------------------------------------


def projection_config(align: Mapping[str, Any], in_dim: int, out_dim: int) -> dict[str, Any]:
    return {
        "in_dim": int(in_dim),
        "out_dim": int(out_dim),
        "hidden": int(align["hidden"]),
        "layers": int(align.get("layers", 2)),
        "dropout": float(align.get("dropout", 0.0)),
        "normalize": True,
        "standardize": bool(align.get("standardize", True)),
    }


def build_model(
    backbone: TextBackbone, align: Mapping[str, Any], shape_dim: int, *, seed: int, key: str
) -> tuple[TextShapeAlignment, dict[str, Any]]:
    """The objective with a projection initialised from (seed, key); returns it and the projection config."""
    tower = PartiallyFrozenTextTower(backbone.model, int(align.get("trainable_blocks", 4)))
    config = projection_config(align, shape_dim, backbone.dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng_for(seed, STAGE, f"{key}|projection").integers(0, 2**63 - 1)))
        projection = ProjectionHead(**config)
    loss = SymmetricInfoNCE(
        init_temperature=float(align.get("init_temperature", 0.07)), max_scale=float(align.get("max_scale", 100.0))
    )
    head_scale = float(align.get("head_lr", align["lr"])) / float(align["lr"])
    return TextShapeAlignment(tower, projection, loss, head_lr_scale=head_scale), config


@torch.no_grad()
def encode_texts(tower: PartiallyFrozenTextTower, tokens: torch.Tensor, batch_size: int = EVAL_BATCH) -> np.ndarray:
    """L2-normalised text features (T, dim) in eval mode, in fixed chunks (same chunks -> same bytes)."""
    was = tower.training
    tower.train(False)
    device = model_device(tower)
    out = [to_host(tower.encode(tokens[i : i + batch_size].to(device))) for i in range(0, tokens.shape[0], batch_size)]
    tower.train(was)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def project_shapes(projection: ProjectionHead, vectors: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    was = projection.training
    projection.eval()
    x = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    device = model_device(projection)
    out = [to_host(projection(x[i : i + batch_size].to(device))) for i in range(0, x.shape[0], batch_size)]
    projection.train(was)
    return np.concatenate(out).astype(np.float32)


def retrieval_scores(
    text: np.ndarray, shapes: np.ndarray, relevant: np.ndarray, ks: Sequence[int]
) -> dict[str, dict[str, float]]:
    """Recall@K both ways: text->mesh (captions query the shapes) and mesh->text (shapes query the captions)."""
    sim = text.astype(np.float64) @ shapes.astype(np.float64).T
    t2m = recall_at_k(sim, relevant, ks)
    m2t = recall_at_k(sim.T, relevant.T, ks)
    return {"t2m": {f"R@{k}": t2m[k] for k in ks}, "m2t": {f"R@{k}": m2t[k] for k in ks}}


def selection_score(scores: Mapping[str, Mapping[str, float]]) -> float:
    return (scores["t2m"][f"R@{SELECT_K}"] + scores["m2t"][f"R@{SELECT_K}"]) / 2


# ---- training data ------------------------------------------------------------------------------------------------


class PairEpochs:
    """Per epoch: every training shape once (keyed order) with one of its captions (keyed draw)."""

    def __init__(self, shape_ids: Sequence[str], candidates: Sequence[np.ndarray], *, seed: int, key: str) -> None:
        self.shape_ids, self.candidates, self.seed, self.key = list(shape_ids), list(candidates), seed, key
        self._cache: tuple[int, list[tuple[int, int]]] | None = None

    def __len__(self) -> int:
        return len(self.shape_ids)

    def pairs(self, epoch: int) -> list[tuple[int, int]]:
        """(shape index, caption index) pairs of ``epoch`` in visiting order."""
        if self._cache is None or self._cache[0] != epoch:
            order = sorted(
                range(len(self.shape_ids)),
                key=lambda i: (
                    stable_hash(f"{STAGE}|order|{self.key}|seed={self.seed}|epoch={epoch}|{self.shape_ids[i]}"),
                    self.shape_ids[i],
                ),
            )
            pairs = []
            for i in order:
                cands = self.candidates[i]
                pick = (
                    0
                    if len(cands) == 1
                    else int(
                        rng_for(self.seed, f"{STAGE}.caption", f"{self.shape_ids[i]}|epoch={epoch}").integers(
                            len(cands)
                        )
                    )
                )
                pairs.append((i, int(cands[pick])))
            self._cache = (epoch, pairs)
        return self._cache[1]


def make_collate(vectors: np.ndarray, tokens: torch.Tensor, token_row: np.ndarray):
    shapes = torch.from_numpy(vectors)

    def collate(pairs: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        shape_idx = torch.as_tensor([p[0] for p in pairs], dtype=torch.long)
        text_idx = torch.as_tensor(token_row[[p[1] for p in pairs]], dtype=torch.long)
        return {"shape": shapes[shape_idx], "tokens": tokens[text_idx]}

    return collate


# ---- validation hook ------------------------------------------------------------------------------------------


class BestRetrieval:
    """A loop hook: every ``every`` steps, Recall@K both ways on the validation fold; keeps the best trainable
    state by mean R@5 (strictly better wins). Its state (best score/step/weights, history) is checkpointed."""

    def __init__(
        self,
        shapes: ShapeSet,
        captions: CaptionTable,
        tokens: torch.Tensor,
        token_row: np.ndarray,
        *,
        every: int,
        log: logging.Logger,
    ) -> None:
        self.shapes, self.captions, self.tokens, self.token_row = shapes, captions, tokens, token_row
        self.relevant = captions.relevance(shapes.ids, shapes.labels)
        self.every, self.log = every, log
        self.best_score, self.best_step, self.best_state = -math.inf, -1, None
        self.history: list[dict[str, Any]] = []

    def evaluate(self, model: TextShapeAlignment) -> dict[str, dict[str, float]]:
        text = encode_texts(model.text_tower, self.tokens)[self.token_row]
        shapes = project_shapes(model.projection, self.shapes.vectors)
        return retrieval_scores(text, shapes, self.relevant, VAL_KS)

    def __call__(self, step: int, model: TextShapeAlignment) -> dict[str, float]:
        scores = self.evaluate(model)
        score = selection_score(scores)
        self.history.append({"step": int(step), **scores, "score": score})
        if score > self.best_score:
            self.best_score, self.best_step = score, int(step)
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.log.info(
            "step %d | val t2m R@1/5/10 %s | m2t %s | score %.4f | best %.4f at step %d",
            step,
            _fmt(scores["t2m"]),
            _fmt(scores["m2t"]),
            score,
            self.best_score,
            self.best_step,
        )
        return {
            "val_t2m_r5": scores["t2m"][f"R@{SELECT_K}"],
            "val_m2t_r5": scores["m2t"][f"R@{SELECT_K}"],
            "val_score": score,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_state": self.best_state or {},
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_score, self.best_step = float(state["best_score"]), int(state["best_step"])
        self.best_state = dict(state["best_state"]) or None
        self.history = json.loads(state["history"])


def _fmt(recalls: Mapping[str, float]) -> str:
    return "/".join(f"{v:.3f}" for v in recalls.values())


# ---- one fold -------------------------------------------------------------------------------------------------


@dataclass
class AlignmentRun:
    """A finished training job: the model (best state loaded), its backbone and what to record."""

    model: TextShapeAlignment
    backbone: TextBackbone
    projection_config: dict[str, Any]
    metrics: dict[str, Any]


def fold_split(kfold_path: str | Path, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = read_parquet(kfold_path, columns=["shape_id", "label", "fold"])
    folds = sorted(int(f) for f in table["fold"].unique())
    if fold not in folds:
        raise ValueError(f"{kfold_path}: no fold {fold} (folds {folds})")
    return table[table["fold"] != fold], table[table["fold"] == fold]


def run(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    *,
    log: logging.Logger,
    extra_hooks: Sequence[Any] = (),
) -> tuple[AlignmentRun | None, TrainResult]:
    """Train one fold; returns (run, result), run None when interrupted (or not the main process).
    ``extra_hooks`` run after the validation hook (tests: a signal at a given step)."""
    align, seed, fold = params["align"], int(params["seed"]), int(params["fold"])
    key = f"{params['dataset']}|{params['method']}|fold{fold}"
    train_table, val_table = fold_split(files["kfold"], fold)
    captions = load_captions(params, files)
    train_shapes = shape_set(files["shape_embeddings"], train_table)
    val_shapes = shape_set(files["shape_embeddings"], val_table)

    candidates = captions.candidates()
    per_shape = [candidates.of(s, lab) for s, lab in zip(train_shapes.ids, train_shapes.labels.tolist())]
    has = np.array([len(c) > 0 for c in per_shape], dtype=bool)
    if not has.any():
        raise ValueError(f"{key}: none of the {len(train_shapes)} training shapes has a caption ({captions.source})")
    if not has.all():
        log.info(
            "%s: %d of %d training shapes have no caption and are not used", key, int((~has).sum()), len(train_shapes)
        )
    train_shapes = ShapeSet(
        [s for s, h in zip(train_shapes.ids, has) if h], train_shapes.vectors[has], train_shapes.labels[has]
    )
    per_shape = [c for c, h in zip(per_shape, has) if h]
    val_captions = captions.for_shapes(val_shapes.ids, val_shapes.labels)
    if len(val_captions) == 0:
        raise ValueError(f"{key}: no caption describes a shape of validation fold {fold} ({len(val_shapes)} shapes)")
    log.info(
        "%s: %s | train %d shapes (%d captions) | val %d shapes, %d captions",
        key,
        captions.source,
        len(train_shapes),
        int(sum(len(c) for c in per_shape)),
        len(val_shapes),
        len(val_captions),
    )

    backbone = text_backbone(params["text"], seed)
    model, proj_config = build_model(backbone, align, train_shapes.vectors.shape[1], seed=seed, key=key)
    if model.projection.standardize:
        model.projection.fit_input(train_shapes.vectors)  # train folds only (a resume restores the same buffers)
    tokens, token_row = tokenize(backbone, captions.texts)
    val_tokens, val_row = tokenize(backbone, val_captions.texts)

    batch = min(int(align["batch_size"]), len(train_shapes))
    if batch < 2:
        raise ValueError(f"{key}: contrastive training needs at least 2 shapes per batch, have {len(train_shapes)}")
    steps = int(align["steps"])
    every = max(1, min(int(align["eval_every"]), steps))
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch,
        lr=float(align["lr"]),
        weight_decay=float(align.get("weight_decay", 0.01)),
        warmup_steps=int(round(float(align.get("warmup_frac", 0.05)) * steps)),
        min_lr_ratio=0.01,
        clip_grad=1.0,
        checkpoint_every=int(align.get("checkpoint_every") or every),
        log_every=min(every, 50),
        seed=seed,
    )
    hook = BestRetrieval(val_shapes, val_captions, val_tokens, val_row, every=every, log=log)
    hook(0, model)  # the untrained model's score: the baseline, and a candidate (a resume overwrites it)
    epochs = PairEpochs(train_shapes.ids, per_shape, seed=seed, key=key)
    result = train(
        model,
        EpochData(lambda epoch: epochs.pairs(epoch), make_collate(train_shapes.vectors, tokens, token_row)),
        cfg,
        state_dir,
        config_hash=run_fingerprint(params, files),
        log=log,
        metrics_path=Path(state_dir) / "train_log.jsonl",
        hooks=[hook, *extra_hooks],
        sinks=metrics_sinks(params, state_dir, log=log),
    )
    if result.interrupted or not result.is_main:
        return None, result
    model.load_state_dict(hook.best_state)
    model.eval()
    best = next(h for h in hook.history if h["step"] == hook.best_step)
    metrics = {
        "dataset": params["dataset"],
        "method": params["method"],
        "fold": fold,
        "seed": seed,
        "caption_source": captions.source,
        "steps": result.steps,
        "best_step": hook.best_step,
        "selection": f"mean(t2m R@{SELECT_K}, m2t R@{SELECT_K}) on validation fold {fold}",
        "val": {"t2m": best["t2m"], "m2t": best["m2t"], "score": best["score"]},
        "initial_val_score": hook.history[0]["score"],
        "history": hook.history,
        "temperature": model.loss.temperature,
        "train_shapes": len(train_shapes),
        "val_shapes": len(val_shapes),
        "val_captions": len(val_captions),
        "text": {
            "model": params["text"]["model"],
            "weights_sha256": backbone.weights.sha256,
            "trainable_blocks": model.text_tower.trainable_blocks,
            "n_blocks": model.text_tower.layout.n_blocks,
        },
    }
    return AlignmentRun(model, backbone, proj_config, metrics), result


def stage(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    out: Mapping[str, str],
    log: logging.Logger,
) -> tuple[dict[str, Any] | None, TrainResult]:
    """The align_text3d job: train one fold and publish the alignment (``out``: projection, text_tower, head_json,
    metrics)."""
    run_, result = run(params, files, state_dir, log=log)
    if run_ is None:
        return None, result
    save_alignment(
        run_.model,
        run_.backbone,
        out["projection"],
        out["text_tower"],
        out["head_json"],
        projection_config=run_.projection_config,
        text_config=params["text"],
        seed=int(params["seed"]),
        extra={
            "dataset": params["dataset"],
            "method": params["method"],
            "fold": int(params["fold"]),
            "best_step": run_.metrics["best_step"],
            "val": run_.metrics["val"],
            "git": git_describe(),
        },
    )
    return run_.metrics, result


def summary(metrics: Mapping[str, Any]) -> str:
    val = metrics["val"]
    return (
        f"fold {metrics['fold']}: best step {metrics['best_step']} | val t2m R@5 {val['t2m']['R@5']:.4f} | "
        f"m2t R@5 {val['m2t']['R@5']:.4f} | temperature {metrics['temperature']:.4f}"
    )
