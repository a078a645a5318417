"""Metric-learning head over precomputed embeddings: triplets with band-chosen negatives, a UCB1 bandit per step.

- Pool: the train-split items of the embedding space (labels from the manifest). Anchors: pool items with at least
  one other same-label pool item (a positive) and at least one negative in some difficulty band. Neighbours outside
  the pool (val/test) and same-label neighbours never serve as negatives (see ``embed.negatives``).
- Each step the bandit picks a band; per anchor of the batch a uniform same-label positive and a uniform negative
  of that band (anchors without it fall back to the nearest non-empty band; the fraction is logged). Loss: the
  triplet margin loss on the projected, L2-normalised vectors.
- Reward: the fraction of the batch's triplets that violate the margin. A band whose negatives still violate the
  margin is where the head has something left to learn (violations are exactly the triplets with a gradient); a
  band the head has already separated gives ~0 and is pulled less. It lies in [0, 1] as UCB1 needs, and under
  several processes it is averaged over all of them so every rank's bandit stays identical.
- Every draw comes from the loop's per-step generator and the bandit state is checkpointed with the weights, so an
  interrupted run resumes to the bit.
- Evaluation: Rank@1/5/10 + mAP on the qg splits (test items) with the projected vectors and with the raw ones
  (the baseline the head must beat), and retrieval mAP of the val items against the val + train items
  (``validation_map``, the objective of the hyper-parameter search; test is never used there).
- Export: ``save_metric_head`` writes safetensors + a JSON sidecar; ``load_metric_head`` + ``project`` embed new
  vectors with a published head.
"""

from __future__ import annotations

import hashlib
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
from torch import nn
from torch.utils.data import Dataset

from ..config import canonical_json, cfg_hash
from ..embed.difficulty import parse_bands, read_difficulty_metadata
from ..embed.metric_head import build_head, project, save_metric_head
from ..embed.negatives import (
    BandNegatives,
    BandNegativeTensors,
    SameLabelPositives,
    build_band_negatives,
    sample_negatives,
    sample_positives,
)
from ..embed.vectors import Embeddings, read_vectors
from ..eval.retrieval import average_precision, qg_rank_map, recall_at_k
from ..io.tables import read_parquet
from ..io.weights import file_sha256
from ..log import git_describe
from ..objectives.triplet import triplet_loss
from ..rng import rng_for
from ..train.bandit import UCB1Bandit
from ..train.loop import EpochData, TrainConfig, TrainResult, train
from ..train.wandb_sink import metrics_sinks

STAGE = "train_metric_head"
KS = (1, 5, 10)
# Head settings with defaults (the config may set them; the demo config does not need to).
DEFAULTS = {
    "layers": 2,
    "dropout": 0.0,
    "metric": "cosine",
    "warmup_frac": 0.0,
    "min_lr_ratio": 0.01,
    "discount": 1.0,
    "standardize": True,
}


# --- data ---------------------------------------------------------------------------------------------------------


@dataclass
class HeadData:
    """Everything training and evaluation need, read once (the tuner reuses it across trials)."""

    embeddings: Embeddings
    labels: dict[str, int]  # shape id -> label (manifest)
    splits: dict[str, list[str]]  # ttv split -> ids that have a vector, sorted
    groups: dict[str, str]  # shape id -> ttv group (near-duplicate family)
    pool_ids: list[str]  # = splits["train"]
    pool_vectors: np.ndarray
    pool_labels: np.ndarray
    anchors: np.ndarray  # pool indices
    negatives: BandNegatives
    positives: SameLabelPositives
    qg: pd.DataFrame | None
    digest: str  # of the input files (part of the resume fingerprint)

    def vectors_of(self, ids: Sequence[str]) -> np.ndarray:
        row = self._rows()
        return self.embeddings.vectors[[row[i] for i in ids]]

    def _rows(self) -> dict[str, int]:
        if not hasattr(self, "_row_cache"):
            self._row_cache = {sid: r for r, sid in enumerate(self.embeddings.ids)}
        return self._row_cache


def _file_digest(paths: Sequence[str | Path]) -> str:
    return hashlib.sha256("|".join(file_sha256(p) for p in paths).encode()).hexdigest()


def _read_table(path: str | Path, columns: set[str], what: str) -> pd.DataFrame:
    try:
        table = read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the {what}: {exc}") from exc
    missing = columns - set(table.columns)
    if missing:
        raise ValueError(f"{path}: the {what} lacks column(s) {sorted(missing)}")
    return table


def load_data(files: Mapping[str, Any], log: logging.Logger) -> HeadData:
    """Read and cross-check the inputs (embeddings, difficulty, manifest, ttv, optional qg)."""
    emb_path = Path(files["embeddings"])
    try:
        emb = read_vectors(emb_path)
    except (OSError, KeyError) as exc:
        raise ValueError(f"{emb_path}: cannot read the embeddings: {exc}") from exc
    for key in ("model", "weights_sha256"):
        if key not in emb.metadata:
            raise ValueError(f"{emb_path}: embeddings metadata lacks {key!r}")
    manifest = _read_table(files["manifest"], {"shape_id", "label"}, "manifest")
    labels = dict(zip(manifest["shape_id"].astype(str), manifest["label"].astype(int)))
    unlabeled = [sid for sid in emb.ids if sid not in labels]
    if unlabeled:
        raise ValueError(
            f"{emb_path}: {len(unlabeled)} embedded ids are not in the manifest {files['manifest']} "
            f"(first: {unlabeled[:3]}); were they made from another dataset?"
        )
    ttv = _read_table(files["ttv"], {"shape_id", "split"}, "ttv split table")
    has_vector = set(emb.ids)
    splits = {
        name: sorted(sid for sid in ttv.loc[ttv["split"] == name, "shape_id"].astype(str) if sid in has_vector)
        for name in ("train", "val", "test")
    }
    groups = (
        dict(zip(ttv["shape_id"].astype(str), ttv["group"].astype(str)))
        if "group" in ttv.columns
        else {sid: sid for sid in ttv["shape_id"].astype(str)}
    )
    not_embedded = int((~ttv["shape_id"].astype(str).isin(has_vector)).sum())
    if not_embedded:
        log.warning("%d ttv items have no embedding in %s (left out)", not_embedded, emb_path)

    pool_ids = splits["train"]
    if not pool_ids:
        raise ValueError(f"{files['ttv']}: no train-split item has an embedding in {emb_path}")
    row = {sid: r for r, sid in enumerate(emb.ids)}
    pool_vectors = emb.vectors[[row[s] for s in pool_ids]]
    pool_labels = np.array([labels[s] for s in pool_ids], dtype=np.int64)

    diff_path = Path(files["difficulty"])
    bands = parse_bands(read_difficulty_metadata(diff_path)["bands"]).names  # hardest first (the JSON is key-sorted)
    table = _read_table(diff_path, {"anchor_id", "band", "neighbour_id", "rank"}, "difficulty table")
    negatives = build_band_negatives(table, list(bands), pool_ids, pool_labels)
    positives = SameLabelPositives.of(pool_labels)
    anchors = np.flatnonzero(positives.has_positive() & negatives.has_any()).astype(np.int64)
    if anchors.size == 0:
        raise ValueError(
            f"{diff_path}: no train item has both a same-label positive and a band negative "
            f"(train items: {len(pool_ids)}, classes: {len(set(pool_labels.tolist()))})"
        )
    counts = negatives.counts()[:, anchors]
    log.info(
        "pool: %d train items, %d classes | anchors: %d | anchors lacking a band: %s",
        len(pool_ids),
        len(set(pool_labels.tolist())),
        anchors.size,
        ", ".join(f"{b} {int((counts[i] == 0).sum())}" for i, b in enumerate(negatives.bands)),
    )

    qg = None
    if files.get("qg"):
        qg = _read_table(files["qg"], {"split_id", "shape_id", "role"}, "qg split table")
        absent = sorted(set(qg["shape_id"].astype(str)) - has_vector)
        if absent:
            raise ValueError(
                f"{files['qg']}: {len(absent)} query/gallery items have no embedding in {emb_path} "
                f"(first: {absent[:3]})"
            )
    inputs = [files[k] for k in ("embeddings", "difficulty", "manifest", "ttv", "qg") if files.get(k)]
    return HeadData(
        emb,
        labels,
        splits,
        groups,
        pool_ids,
        pool_vectors,
        pool_labels,
        anchors,
        negatives,
        positives,
        qg,
        _file_digest(inputs),
    )


class AnchorEpoch(Dataset):
    """One epoch: every anchor once, in an order fixed by (seed, epoch)."""

    def __init__(self, anchors: np.ndarray, seed: int, epoch: int):
        self.order = rng_for(seed, STAGE, f"anchors|epoch={epoch}").permutation(anchors)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> int:
        return int(self.order[i])


def collate_anchors(samples: list[int]) -> torch.Tensor:
    return torch.tensor(samples, dtype=torch.long)


# --- objective ----------------------------------------------------------------------------------------------------


def head_config(head_cfg: Mapping[str, Any], in_dim: int) -> dict[str, Any]:
    """The ProjectionHead's constructor arguments (also what the export JSON records)."""
    cfg = {**DEFAULTS, **head_cfg}
    return {
        "in_dim": int(in_dim),
        "out_dim": int(cfg["out_dim"]),
        "hidden": int(cfg["hidden"]) or None,
        "layers": int(cfg["layers"]),
        "dropout": float(cfg["dropout"]),
        "normalize": True,
        "standardize": bool(cfg["standardize"]),
    }


class MetricHeadObjective(nn.Module):
    """Triplet objective of the loop (see the module docstring). The pool lives in non-persistent buffers, so
    checkpoints hold only the head and the bandit."""

    def __init__(
        self, head: nn.Module, data: HeadData, *, margin: float, metric: str, exploration: float, discount: float = 1.0
    ):
        super().__init__()
        self.head, self.margin, self.metric = head, float(margin), metric
        self.bandit = UCB1Bandit(data.negatives.bands, exploration=exploration, discount=discount)
        self.bands = list(data.negatives.bands)
        self.fallbacks = 0  # anchors that got a fallback band, over the whole run
        self.register_buffer("pool", torch.from_numpy(np.ascontiguousarray(data.pool_vectors)), persistent=False)
        neg = BandNegativeTensors.of(data.negatives)
        self.n_pool = neg.n_pool
        self.register_buffer("neg_indptr", neg.indptr, persistent=False)
        self.register_buffer("neg_indices", neg.indices, persistent=False)
        self.register_buffer("neg_source", neg.source_band, persistent=False)
        for name, tensor in data.positives.tensors().items():
            self.register_buffer(f"pos_{name}", tensor, persistent=False)

    def forward(
        self, anchors: torch.Tensor, *, step: int, total_steps: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        band = self.bandit.select()
        b = self.bands.index(band)
        positives = sample_positives(
            {k: getattr(self, f"pos_{k}") for k in ("order", "start", "size", "slot")}, anchors, generator
        )
        neg_tables = BandNegativeTensors(self.n_pool, self.neg_indptr, self.neg_indices, self.neg_source)
        negatives, fell_back = sample_negatives(neg_tables, b, anchors, generator)
        projected = self.head(self.pool[torch.cat([anchors, positives, negatives])])
        a, p, n = projected.split(anchors.shape[0])
        loss, violated = triplet_loss(a, p, n, margin=self.margin, metric=self.metric)
        # Counts on the loss's device (NCCL reduces CUDA tensors only; integers are exact in float32 up to 2^24),
        # brought to the host once: the bandit needs the reward now.
        dtype = torch.float64 if loss.device.type == "cpu" else torch.float32
        counts = torch.stack(
            [violated.sum(), torch.tensor(violated.numel(), device=loss.device), fell_back.sum().to(loss.device)]
        ).to(dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)  # one reward for all ranks: their bandits must not diverge
        violated_n, total_n, fallback_n = counts.tolist()
        reward = violated_n / max(total_n, 1.0)
        self.bandit.update(band, reward)
        self.fallbacks += int(fallback_n)
        logs = {"reward": reward, "band": float(b), "fallback_frac": fallback_n / max(total_n, 1.0)}
        means = self.bandit.means()
        for name, pulls in zip(self.bands, self.bandit.pulls):
            logs[f"pulls/{name}"] = float(pulls)
            logs[f"reward_mean/{name}"] = 0.0 if math.isnan(means[name]) else means[name]
        return loss, logs

    def after_step(self) -> None:
        pass

    def get_extra_state(self) -> dict[str, Any]:
        return {"bandit": self.bandit.state_dict(), "fallbacks": self.fallbacks}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.bandit.load_state_dict(state["bandit"])
        self.fallbacks = int(state["fallbacks"])

    def bandit_report(self) -> dict[str, Any]:
        means = self.bandit.means()
        return {
            "arms": list(self.bands),
            "pulls": dict(zip(self.bands, self.bandit.pulls)),
            "mean_reward": {k: (None if math.isnan(v) else v) for k, v in means.items()},
            "fallback_anchors": self.fallbacks,
            "exploration": self.bandit.exploration,
            "discount": self.bandit.discount,
        }


def train_config(head_cfg: Mapping[str, Any], n_anchors: int, seed: int) -> TrainConfig:
    cfg = {**DEFAULTS, **head_cfg}
    steps = int(cfg["steps"])
    return TrainConfig(
        steps=steps,
        batch_size=min(int(cfg["batch_size"]), n_anchors),
        lr=float(cfg["lr"]),
        weight_decay=float(cfg["weight_decay"]),
        warmup_steps=int(round(cfg["warmup_frac"] * steps)),
        min_lr_ratio=float(cfg["min_lr_ratio"]),
        clip_grad=1.0,
        checkpoint_every=max(1, min(int(cfg["checkpoint_every"]), steps)),
        log_every=max(1, min(50, steps // 10)),
        seed=seed,
    )


def train_head(
    data: HeadData,
    head_cfg: Mapping[str, Any],
    state_dir: str | Path,
    *,
    seed: int,
    key: str,
    config_hash: str,
    log: logging.Logger,
    hooks: Sequence[Any] = (),
    sinks: Sequence[Any] = (),
) -> tuple[MetricHeadObjective, TrainResult]:
    """Build and train (or resume) a head; returns the objective (head + bandit) and the loop's result."""
    cfg = {**DEFAULTS, **head_cfg}
    head = build_head(head_config(cfg, data.embeddings.dim), seed=seed, key=key)
    if head.standardize:
        head.fit_input(data.pool_vectors)  # the train items (a resume restores the same buffers)
    objective = MetricHeadObjective(
        head, data, margin=cfg["margin"], metric=cfg["metric"], exploration=cfg["exploration"], discount=cfg["discount"]
    )
    tcfg = train_config(cfg, len(data.anchors), seed)
    source = EpochData(lambda epoch: AnchorEpoch(data.anchors, seed, epoch), collate_anchors)
    result = train(
        objective,
        source,
        tcfg,
        state_dir,
        config_hash=config_hash,
        log=log,
        metrics_path=Path(state_dir) / "train_log.jsonl",
        hooks=hooks,
        sinks=sinks,
    )
    if result.is_main and not result.interrupted:
        log.info("bandit: %s | fallback anchors %d", objective.bandit.summary(), objective.fallbacks)
    return objective, result


# --- evaluation ---------------------------------------------------------------------------------------------------


def validation_items(data: "HeadData") -> tuple[list[str], list[int], list[str], np.ndarray]:
    """(ids, labels, groups, query mask) of the validation retrieval: the val items query a gallery of every other
    val and train item (never a test item). A small val split (one item per class in the demo) still has
    same-class items to find among the train items."""
    ids = [*data.splits["val"], *data.splits["train"]]
    queries = np.zeros(len(ids), dtype=bool)
    queries[: len(data.splits["val"])] = True
    return ids, [data.labels[s] for s in ids], [data.groups.get(s, s) for s in ids], queries


def validation_map(
    vectors: np.ndarray, labels: Sequence[int], groups: Sequence[str], queries: np.ndarray | None = None
) -> dict[str, float]:
    """Retrieval among ``vectors`` (cosine; same label = relevant): each query row (``queries`` mask, default all)
    against every other row.

    Items of the query's own ttv group (near-duplicates, which make retrieval trivial, and the query itself) are
    left out of its gallery, as the qg protocol does. Queries with no same-label item outside their group are not
    scored.
    """
    x = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("validation vectors include zero vectors (cosine undefined)")
    x = x / norms
    labels, groups = np.asarray(labels), np.asarray(groups, dtype=object)
    rows = np.ones(len(x), dtype=bool) if queries is None else np.asarray(queries, dtype=bool)
    sim = x[rows] @ x.T
    excluded = groups[rows, None] == groups[None, :]  # includes the query itself
    sim[excluded] = -2.0  # below every cosine: ranked last, and never relevant
    relevant = (labels[rows, None] == labels[None, :]) & ~excluded
    scored = relevant.any(axis=1)
    if not scored.any():
        raise ValueError(
            f"no validation query has a same-label item outside its group ({int(rows.sum())} queries, "
            f"{len(labels)} items)"
        )
    ap = average_precision(sim[scored], relevant[scored])
    out = {f"rank@{k}": v for k, v in recall_at_k(sim[scored], relevant[scored], KS).items()}
    return {**out, "mAP": float(ap.mean()), "n_query": int(scored.sum()), "n_items": int(len(labels))}


def evaluate(objective: MetricHeadObjective, data: HeadData) -> dict[str, Any]:
    """qg test retrieval (projected and raw) and val retrieval against val + train (projected and raw)."""
    out: dict[str, Any] = {}
    if data.qg is not None:
        ids = sorted(set(data.qg["shape_id"].astype(str)))
        raw = data.vectors_of(ids)
        out["test_qg"] = {
            "projected": qg_rank_map((ids, project(raw, objective.head)), data.labels, data.qg, KS),
            "raw": qg_rank_map((ids, raw), data.labels, data.qg, KS),
        }
    if data.splits["val"]:
        ids, labels, groups, queries = validation_items(data)
        raw = data.vectors_of(ids)
        out["val"] = {
            "projected": validation_map(project(raw, objective.head), labels, groups, queries),
            "raw": validation_map(raw, labels, groups, queries),
        }
    return out


# --- export -------------------------------------------------------------------------------------------------------


# --- the job ------------------------------------------------------------------------------------------------------


def effective_head_cfg(
    params: Mapping[str, Any], best_path: str | Path | None, log: logging.Logger
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The head section, with the tuned values of an Optuna best.json applied when given."""
    head = dict(params["head"])
    if best_path is None:
        if params.get("tuned"):
            raise ValueError("tuned: true but no 'best' input (the tuner's best.json) was given")
        return head, None
    try:
        best = json.loads(Path(best_path).read_text())
        tuned = dict(best["params"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{best_path}: not a tuner best.json (need a 'params' object): {exc}") from exc
    unknown = sorted(set(tuned) - set(head))
    if unknown:
        raise ValueError(f"{best_path}: tuned parameter(s) {unknown} are not head settings ({sorted(head)})")
    log.info("tuned values from %s (trial %s, val mAP %s): %s", best_path, best.get("trial"), best.get("value"), tuned)
    head.update(tuned)
    return head, {"path": str(best_path), "params": tuned, "value": best.get("value"), "trial": best.get("trial")}


def run(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    *,
    log: logging.Logger,
    hooks: Sequence[Any] = (),
) -> tuple[dict[str, Any] | None, MetricHeadObjective, TrainResult, HeadData]:
    """Train (resumably) and evaluate; metrics None when interrupted."""
    seed, space = int(params["seed"]), str(params["space"])
    head_cfg, tuned = effective_head_cfg(params, files.get("best"), log)
    data = load_data(files, log)
    fingerprint = cfg_hash(canonical_json({"seed": seed, "space": space, "head": head_cfg, "inputs": data.digest}))
    objective, result = train_head(
        data,
        head_cfg,
        state_dir,
        seed=seed,
        key=space,
        config_hash=fingerprint,
        log=log,
        hooks=hooks,
        sinks=metrics_sinks(params, state_dir, log=log),
    )
    if result.interrupted or not result.is_main:
        return None, objective, result, data
    metrics = {
        "space": space,
        "seed": seed,
        "head": head_cfg,
        "tuned": tuned,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "train_items": len(data.pool_ids),
        "anchors": int(len(data.anchors)),
        "negatives_dropped": data.negatives.dropped,
        "bandit": objective.bandit_report(),
        **evaluate(objective, data),
    }
    return metrics, objective, result, data


def export(
    objective: MetricHeadObjective,
    data: HeadData,
    head_cfg: Mapping[str, Any],
    safetensors_path: str | Path,
    json_path: str | Path,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Publish a trained head with the provenance of its embedding space."""
    return save_metric_head(
        objective.head,
        safetensors_path,
        json_path,
        {
            "config": head_config(head_cfg, data.embeddings.dim),
            "source": {k: v for k, v in data.embeddings.metadata.items() if k not in ("id_column",)},
            **extra,
        },
    )


def stage(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    state_dir: str | Path,
    out: Mapping[str, str],
    log: logging.Logger,
) -> tuple[dict[str, Any] | None, TrainResult]:
    """The train_metric_head job: train, evaluate and publish the head (``out``: head, head_json, metrics)."""
    metrics, objective, result, data = run(params, files, state_dir, log=log)
    if metrics is not None:
        export(
            objective,
            data,
            metrics["head"],
            out["head"],
            out["head_json"],
            {
                "space": params["space"],
                "seed": int(params["seed"]),
                "steps": result.steps,
                "tuned": metrics["tuned"],
                "git": git_describe(),
            },
        )
    return metrics, result


def summary(metrics: Mapping[str, Any]) -> str:
    if "test_qg" not in metrics:
        return f"head for {metrics['space']} trained ({metrics['steps']} steps)"
    proj, raw = metrics["test_qg"]["projected"], metrics["test_qg"]["raw"]
    return (
        f"test qg mAP {proj['mAP']:.4f} (raw {raw['mAP']:.4f}) | Rank@1 {proj['rank@1']:.4f} (raw {raw['rank@1']:.4f})"
    )
