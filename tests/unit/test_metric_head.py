"""Metric head over precomputed embeddings: band negatives, bandit wiring, learning, exact resume, export, tuning."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline3d.embed import metric_head as head_files
from pipeline3d.embed.difficulty import difficulty_bands, parse_bands, write_difficulty
from pipeline3d.embed.negatives import build_band_negatives
from pipeline3d.embed.vectors import write_vectors
from pipeline3d.jobs import metric_head
from pipeline3d.rng import rng_for
from pipeline3d.stages import train_metric_head, tune_metric_head
from pipeline3d.train import EXIT_INTERRUPTED
from train_hooks import SignalAt

LOG = logging.getLogger("test_metric_head")
N_CLASSES, PER_SPLIT = 4, {"train": 20, "val": 6, "test": 8}
SIGNAL_DIMS, NOISE_DIMS = 4, 12
BANDS = {"by": "rank", "bands": {"hard": [1, 4], "medium": [5, 10], "easy": [11, 20]}}
HEAD = {
    "out_dim": 8,
    "hidden": 32,
    "margin": 0.2,
    "steps": 120,
    "batch_size": 16,
    "lr": 1.0e-2,
    "weight_decay": 0.0,
    "exploration": 1.0,
    "checkpoint_every": 40,
}


def _write_space(root: Path, *, noise: float = 2.0) -> dict[str, str]:
    """Clustered classes in a few signal dims drowned by many noisy dims (raw cosine retrieval is poor; a linear
    projection onto the signal dims is near perfect), plus the band table, manifest, ttv and a 2-split qg table."""
    rng = rng_for(0, "test_metric_head", "space")
    centres = 2.0 * np.eye(N_CLASSES, SIGNAL_DIMS)
    ids, vectors, rows = [], [], []
    for label in range(N_CLASSES):
        for split, n in PER_SPLIT.items():
            for i in range(n):
                sid = f"toy/c{label}/{split}{i:02d}"
                signal_part = centres[label] + 0.3 * rng.standard_normal(SIGNAL_DIMS)
                vectors.append(np.concatenate([signal_part, noise * rng.standard_normal(NOISE_DIMS)]))
                ids.append(sid)
                rows.append((sid, label, split))
    vectors = np.asarray(vectors, dtype=np.float32)
    table = pd.DataFrame(rows, columns=["shape_id", "label", "split"])
    files = {name: str(root / f"{name}.parquet") for name in ("embeddings", "difficulty", "manifest", "ttv", "qg")}
    write_vectors(
        files["embeddings"],
        ids,
        vectors,
        {"model": "toy-backbone", "weights_sha256": "ab" * 32, "preprocessing": "none"},
    )
    spec = parse_bands(BANDS)
    bands = difficulty_bands(vectors, ids, spec, identity=table["label"].to_numpy())
    write_difficulty(files["difficulty"], bands, spec, "cosine", spec.max_rank)
    table.assign(label_name=[f"c{label}" for label in table["label"]]).to_parquet(files["manifest"])
    table.assign(group=table["shape_id"]).to_parquet(files["ttv"])
    test = table[table["split"] == "test"]
    qg = []
    for split_id in range(2):  # one query per class (its split_id-th test item); every other test item is gallery
        queries = {cls["shape_id"].iloc[split_id] for _, cls in test.groupby("label")}
        qg += [
            (split_id, sid, label, "query" if sid in queries else "gallery")
            for sid, label in zip(test["shape_id"], test["label"])
        ]
    pd.DataFrame(qg, columns=["split_id", "shape_id", "label", "role"]).to_parquet(files["qg"])
    return files


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> dict[str, str]:
    return _write_space(tmp_path_factory.mktemp("space"))


def _params(**head) -> dict:
    return {"seed": 3, "space": "shape/toy/backbone", "head": {**HEAD, **head}, "tuned": False, "stage_version": 1}


def _run_and_export(files, state_dir: Path, out: Path, params=None, hooks=()):
    params = params or _params()
    metrics, objective, result, data = metric_head.run(params, files, state_dir, log=LOG, hooks=hooks)
    if metrics is not None:
        metric_head.export(objective, data, metrics["head"], out / "head.safetensors", out / "head.json", {})
    return metrics, objective, result


@pytest.fixture(scope="module")
def reference(space, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    metrics, objective, result = _run_and_export(space, out / "state", out)
    return out, metrics, objective


def test_band_negatives_drop_foreign_and_same_label_pairs_and_fall_back_to_the_nearest_band():
    table = pd.DataFrame(
        {
            "anchor_id": ["a", "a", "a", "b", "b", "c"],
            "band": ["hard", "hard", "easy", "easy", "easy", "medium"],
            "neighbour_id": ["b", "t", "c", "a", "a2", "a"],  # t: not in the pool; a2: same label as b
            "rank": [1, 2, 9, 10, 11, 5],
        }
    )
    pool_ids, labels = ["a", "b", "c", "a2"], np.array([0, 1, 2, 1])
    neg = build_band_negatives(table, ["hard", "medium", "easy"], pool_ids, labels)
    assert neg.dropped == {"anchor_outside_pool": 0, "neighbour_outside_pool": 1, "same_label": 1}
    counts = neg.counts()
    assert counts[:, 0].tolist() == [1, 0, 1] and counts[:, 1].tolist() == [0, 0, 1]
    assert counts[:, 2].tolist() == [0, 1, 0] and counts[:, 3].tolist() == [0, 0, 0]
    # a lacks "medium": hard and easy are equally near, the harder one wins; b only has "easy"
    assert neg.source_band[:, 0].tolist() == [0, 0, 2]
    assert neg.source_band[:, 1].tolist() == [2, 2, 2]
    assert neg.source_band[:, 2].tolist() == [1, 1, 1]
    assert neg.source_band[:, 3].tolist() == [-1, -1, -1] and neg.has_any().tolist() == [True, True, True, False]
    row = 0 * neg.n_pool + 0  # band hard, anchor a -> b (pool index 1)
    assert neg.indices[neg.indptr[row] : neg.indptr[row + 1]].tolist() == [1]


def test_anchors_negatives_and_positives_stay_in_the_train_split(space):
    data = metric_head.load_data(space, LOG)
    assert data.pool_ids == sorted(s for s in data.pool_ids if "/train" in s)
    assert len(data.anchors) == N_CLASSES * PER_SPLIT["train"]
    assert data.negatives.dropped["neighbour_outside_pool"] > 0  # val/test neighbours were in the table
    objective = metric_head.MetricHeadObjective(
        metric_head.build_head(metric_head.head_config(HEAD, data.embeddings.dim), seed=0),
        data,
        margin=0.2,
        metric="cosine",
        exploration=1.0,
    )
    anchors = torch.from_numpy(data.anchors)
    from pipeline3d.embed.negatives import BandNegativeTensors, sample_negatives, sample_positives

    gen = torch.Generator().manual_seed(0)
    tables = {k: getattr(objective, f"pos_{k}") for k in ("order", "start", "size", "slot")}
    pos = sample_positives(tables, anchors, gen).numpy()
    neg, _ = sample_negatives(BandNegativeTensors.of(data.negatives), 0, anchors, gen)
    labels = data.pool_labels
    assert (labels[pos] == labels[data.anchors]).all() and (pos != data.anchors).all()
    assert (labels[neg.numpy()] != labels[data.anchors]).all()


def test_bandit_prefers_the_band_whose_negatives_violate_the_margin(space):
    """Band "confusing": negatives from a class that overlaps the anchor's; band "far": a distant class. The head is
    fixed (no training), so the violated fraction per band is stationary and the bandit must exploit "confusing"."""
    data = metric_head.load_data(space, LOG)
    ids = np.array(data.pool_ids)
    labels = data.pool_labels
    vectors = np.zeros((len(ids), 2), dtype=np.float32)
    rng = rng_for(0, "test_metric_head", "bandit")
    # classes 0 and 1 share a direction, 2 and 3 share the opposite one
    vectors[:, 0] = np.where(labels < 2, 1.0, -1.0) + 0.05 * rng.standard_normal(len(ids))
    vectors[:, 1] = 0.05 * rng.standard_normal(len(ids))
    partner = {0: 1, 1: 0, 2: 3, 3: 2}
    far = {0: 2, 1: 3, 2: 0, 3: 1}
    rows = []
    for sid, label in zip(ids, labels):
        rows += [(sid, "confusing", o, 1) for o in ids[labels == partner[label]][:5]]
        rows += [(sid, "far", o, 6) for o in ids[labels == far[label]][:5]]
    table = pd.DataFrame(rows, columns=["anchor_id", "band", "neighbour_id", "rank"])
    data.pool_vectors = vectors
    data.negatives = build_band_negatives(table, ["far", "confusing"], data.pool_ids, labels)
    head = torch.nn.Identity()
    objective = metric_head.MetricHeadObjective(head, data, margin=0.2, metric="cosine", exploration=0.5)
    for step in range(60):
        batch = torch.from_numpy(data.anchors[(np.arange(16) + 16 * step) % len(data.anchors)])
        _, logs = objective(batch, step=step, total_steps=60, generator=torch.Generator().manual_seed(step))
        assert 0.0 <= logs["reward"] <= 1.0
    report = objective.bandit_report()
    assert report["mean_reward"]["far"] == 0.0  # opposite directions: cosine distance 2, never violated
    assert report["mean_reward"]["confusing"] > 0.3
    assert report["pulls"]["confusing"] >= 50 and report["pulls"]["far"] >= 1
    # the bandit state travels with the objective's state dict (plain python values)
    clone = metric_head.MetricHeadObjective(torch.nn.Identity(), data, margin=0.2, metric="cosine", exploration=0.5)
    clone.load_state_dict(objective.state_dict())
    assert clone.bandit.state_dict() == objective.bandit.state_dict()


def test_training_beats_the_raw_embeddings(reference):
    _, metrics, _ = reference
    proj, raw = metrics["test_qg"]["projected"], metrics["test_qg"]["raw"]
    assert raw["mAP"] < 0.6  # the noise dims dominate the raw cosine
    assert proj["mAP"] > raw["mAP"] + 0.3
    assert metrics["val"]["projected"]["mAP"] > metrics["val"]["raw"]["mAP"] + 0.2
    assert metrics["test_qg"]["projected"]["n_splits"] == 2
    bandit = metrics["bandit"]
    assert sum(bandit["pulls"].values()) == HEAD["steps"] and set(bandit["pulls"]) == {"hard", "medium", "easy"}
    assert all(0.0 <= m <= 1.0 for m in bandit["mean_reward"].values())


def test_interrupted_run_resumes_to_identical_head_weights(space, reference, tmp_path):
    ref_dir, ref_metrics, _ = reference
    state = tmp_path / "state"
    # the loop sees the signal at the next step boundary: step 51, mid-epoch (80 anchors / 16 = 5 steps per epoch)
    metrics, _, first = _run_and_export(space, state, tmp_path, hooks=[SignalAt(50, signum=signal.SIGUSR1)])
    assert metrics is None and first.interrupted and first.steps == 51 and first.exit_code == EXIT_INTERRUPTED
    assert not (tmp_path / "head.safetensors").exists()
    metrics, _, second = _run_and_export(space, state, tmp_path)
    assert second.resumed_from == 51 and second.steps_run == HEAD["steps"] - 51
    assert (tmp_path / "head.safetensors").read_bytes() == (ref_dir / "head.safetensors").read_bytes()
    assert metrics["bandit"] == ref_metrics["bandit"]
    assert metrics["test_qg"] == ref_metrics["test_qg"]


def test_export_round_trip_and_refusals(space, reference, tmp_path):
    ref_dir, _, objective = reference
    data = metric_head.load_data(space, LOG)
    head = head_files.load_metric_head(ref_dir / "head.safetensors", ref_dir / "head.json")
    sidecar = json.loads((ref_dir / "head.json").read_text())
    assert (sidecar["in_dim"], sidecar["out_dim"], sidecar["hidden"]) == (SIGNAL_DIMS + NOISE_DIMS, 8, 32)
    assert sidecar["source"]["model"] == "toy-backbone" and sidecar["source"]["weights_sha256"] == "ab" * 32
    new = data.embeddings.vectors[:10]
    np.testing.assert_array_equal(head_files.project(new, head), head_files.project(new, objective.head))
    head_files.check_source(sidecar, data.embeddings.metadata)
    with pytest.raises(ValueError, match="model"):
        head_files.check_source(sidecar, {**data.embeddings.metadata, "model": "other"})
    with pytest.raises(ValueError, match=r"expected \(N, 16\)"):
        head_files.project(new[:, :8], head)

    # weights of another head next to this JSON: refused by the sha256
    other = metric_head.build_head(metric_head.head_config({**HEAD, "out_dim": 4}, 16), seed=1)
    head_files.save_metric_head(
        other,
        tmp_path / "other.safetensors",
        tmp_path / "other.json",
        {"config": metric_head.head_config({**HEAD, "out_dim": 4}, 16), "source": sidecar["source"]},
    )
    with pytest.raises(ValueError, match="do not belong"):
        head_files.load_metric_head(tmp_path / "other.safetensors", ref_dir / "head.json")
    # a JSON edited to another shape (sha256 still matching): refused with the shapes named
    edited = {**json.loads((tmp_path / "other.json").read_text()), "out_dim": 8}
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="do not fit"):
        head_files.load_metric_head(tmp_path / "other.safetensors", tmp_path / "edited.json")


def _tune(space, tmp_path, trials: int) -> int:
    params = {
        "seed": 5,
        "space": "shape/toy/backbone",
        "head": HEAD,
        "stage_version": 1,
        "optuna": {
            "enabled": True,
            "trials": trials,
            "steps": 15,
            "search": {"lr": [1.0e-3, 3.0e-2], "margin": [0.05, 0.5], "out_dim": [4, 16]},
        },
    }
    inputs = {k: v for k, v in space.items()}
    return tune_metric_head.main(
        [
            "--params",
            json.dumps(params),
            "--inputs",
            json.dumps(inputs),
            "--study",
            str(tmp_path / "optuna" / "study.sqlite"),
            "--best",
            str(tmp_path / "optuna" / "best.json"),
        ]
    )


def test_tune_resumes_the_study_and_the_best_params_drive_the_final_training(space, tmp_path):
    import optuna

    assert _tune(space, tmp_path, 2) == 0
    first = json.loads((tmp_path / "optuna" / "best.json").read_text())
    assert first["n_trials"] == 2 and len(first["trials"]) == 2
    assert _tune(space, tmp_path, 3) == 0
    best = json.loads((tmp_path / "optuna" / "best.json").read_text())
    summaries = optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'optuna' / 'study.sqlite'}")
    assert len(summaries) == 1 and summaries[0].n_trials == 3  # one more trial, not three new ones
    assert best["n_trials"] == 3 and best["trials"][:2] == first["trials"]
    assert best["value"] == max(t["value"] for t in best["trials"])
    assert set(best["params"]) == {"lr", "margin", "out_dim"} and 4 <= best["params"]["out_dim"] <= 16

    out = tmp_path / "final"
    params = {**_params(steps=20, checkpoint_every=20), "tuned": True}
    code = train_metric_head.main(
        [
            "--params",
            json.dumps(params),
            "--inputs",
            json.dumps({**space, "best": str(tmp_path / "optuna/best.json")}),
            "--state-dir",
            str(out / "state"),
            "--head",
            str(out / "head.safetensors"),
            "--head-json",
            str(out / "head.json"),
            "--metrics",
            str(out / "metrics.json"),
        ]
    )
    assert code == 0
    sidecar = json.loads((out / "head.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert sidecar["out_dim"] == best["params"]["out_dim"]
    assert metrics["head"]["lr"] == best["params"]["lr"] and metrics["tuned"]["trial"] == best["trial"]
    assert {"protocol", "git", "seconds"} <= set(metrics)


def test_tuned_without_best_is_a_clear_error(space, tmp_path, capfd):
    code = train_metric_head.main(
        [
            "--params",
            json.dumps({**_params(), "tuned": True}),
            "--inputs",
            json.dumps(space),
            "--state-dir",
            str(tmp_path / "s"),
            "--head",
            str(tmp_path / "h.safetensors"),
            "--head-json",
            str(tmp_path / "h.json"),
            "--metrics",
            str(tmp_path / "m.json"),
        ]
    )
    assert code == 1 and "no 'best' input" in capfd.readouterr().err
