"""Text-3D alignment: partial unfreezing of an open_clip text tower, K-fold training with selection on validation
recall, kill/resume, saving/reloading the unfrozen weights, and the test-split submission (tiny random CLIP)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from pipeline3d.embed.backbones import build_text_backbone
from pipeline3d.embed.captions import class_prompts, manifest_captions
from pipeline3d.embed.text3d_alignment import load_alignment
from pipeline3d.embed.vectors import write_vectors
from pipeline3d.jobs import align_text3d, submit_text3d
from pipeline3d.models.text_tower import PartiallyFrozenTextTower, UnsupportedTextTower, text_layout
from pipeline3d.objectives.infonce import info_nce
from pipeline3d.stages import align_text3d as align_stage
from pipeline3d.stages import submit_text3d as submit_stage
from pipeline3d.train import checkpoint
from pipeline3d.train.optim import build_optimizer
from train_hooks import SignalAt

LOG = logging.getLogger("test.align_text3d")
# 3 text blocks so that "the last N" leaves some frozen; width 32, output 16.
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 3},
}
CLASSES = ["airplane", "chair", "lamp", "table", "car", "boat", "sofa", "guitar"]
PER_CLASS = 8  # folds 0, 1, 2 get 2 shapes each per class; 2 more per class are the test split
SHAPE_DIM = 24
DS = "toy-mesh"
ALIGN = {
    "method": "nepa",
    "captions": {"dataset": "toy-img", "field": "caption", "shape_field": "shape"},
    "trainable_blocks": 2,
    "hidden": 32,
    "steps": 24,
    "batch_size": 16,
    "lr": 2e-3,
    "head_lr": 2e-2,
    "init_temperature": 0.07,
    "eval_every": 8,
}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    return folder


def _text_cfg(clip_dir: Path) -> dict:
    return {
        "name": "tiny",
        "model": f"local-dir:{clip_dir}",
        "weights": None,
        "random_init": True,
        "templates": ["a 3D model of a {}.", "a {}."],
        "batch_size": 8,
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """A learnable synthetic task: shape vectors are a fixed random linear map of the class (+ small noise);
    each shape has two captions naming its class, in an image dataset's manifest meta."""
    root = tmp_path_factory.mktemp("align_data")
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(len(CLASSES), SHAPE_DIM))
    rows, captions, kfold, ttv, vectors = [], [], [], [], []
    for label, name in enumerate(CLASSES):
        for j in range(PER_CLASS):
            sid = f"{DS}/{name}/m{j:02d}"
            rows.append({"shape_id": sid, "label": label, "label_name": name})
            vectors.append(mixing[label] + 0.05 * rng.normal(size=SHAPE_DIM))
            if j < 6:
                kfold.append({"shape_id": sid, "label": label, "fold": j % 3})
            ttv.append({"shape_id": sid, "label": label, "split": "test" if j >= 6 else ("val" if j == 5 else "train")})
            for v, text in enumerate([f"a 3D model of a {name}", f"a {name} seen from the side"]):
                captions.append(
                    {
                        "shape_id": f"toy-img/{name}/m{j:02d}_v{v}",
                        "label": label,
                        "meta": json.dumps({"caption": text, "shape": f"{name}/m{j:02d}", "view": v}),
                    }
                )
    captions.append(
        {
            "shape_id": "toy-img/other/x_v0",
            "label": 0,  # a shape of another dataset: not used
            "meta": json.dumps({"caption": "a thing", "shape": "elsewhere/x", "view": 0}),
        }
    )
    files = {name: str(root / f"{name}.parquet") for name in ("manifest", "captions_manifest", "kfold", "ttv")}
    pd.DataFrame(rows).to_parquet(files["manifest"])
    pd.DataFrame(captions).to_parquet(files["captions_manifest"])
    pd.DataFrame(kfold).to_parquet(files["kfold"])
    pd.DataFrame(ttv).to_parquet(files["ttv"])
    files["shape_embeddings"] = str(root / "nepa.parquet")
    write_vectors(
        files["shape_embeddings"],
        [r["shape_id"] for r in rows],
        np.asarray(vectors, dtype=np.float32),
        {"model": "toy", "weights_sha256": "0" * 64, "preprocessing": "{}"},
    )
    return files


def _params(clip_dir: Path, fold: int = 0, **align) -> dict:
    return {
        "seed": 5,
        "dataset": DS,
        "method": "nepa",
        "fold": fold,
        "align": {**ALIGN, **align},
        "text": _text_cfg(clip_dir),
        "stage_version": 1,
    }


def _outputs(out: Path) -> list[str]:
    return [
        "--projection",
        str(out / "projection.safetensors"),
        "--text-tower",
        str(out / "text_tower.safetensors"),
        "--head-json",
        str(out / "head.json"),
        "--metrics",
        str(out / "metrics.json"),
    ]


def _train_stage(params: dict, files: dict, out: Path) -> int:
    return align_stage.main(
        [
            "--params",
            json.dumps(params),
            "--inputs",
            json.dumps(files),
            "--state-dir",
            str(out / "state"),
            *_outputs(out),
        ]
    )


@pytest.fixture(scope="module")
def folds(data, clip_dir, tmp_path_factory) -> dict[int, Path]:
    """Both folds of the config trained through the stage CLI."""
    root = tmp_path_factory.mktemp("folds")
    out = {}
    for fold in (0, 1):
        out[fold] = root / f"fold{fold}"
        assert _train_stage(_params(clip_dir, fold), data, out[fold]) == 0
    return out


# ---- the text tower ----------------------------------------------------------------------------------------------


def test_unknown_text_tower_layouts_are_clear_errors(clip_dir):
    class HFLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.text = nn.Module()
            self.text.transformer = nn.Linear(4, 4)  # a Hugging Face model sits here in open_clip's HFTextEncoder

    with pytest.raises(UnsupportedTextTower, match=r"HFLike\.text .*text\.transformer\.resblocks"):
        text_layout(HFLike())
    with pytest.raises(UnsupportedTextTower, match="unsupported open_clip text tower layout in Linear"):
        PartiallyFrozenTextTower(nn.Linear(3, 3), 1)
    backbone = build_text_backbone(f"local-dir:{clip_dir}", allow_random_init=True)
    assert text_layout(backbone.model).n_blocks == 3 and text_layout(backbone.model).prefix == ""
    with pytest.raises(ValueError, match=r"trainable_blocks must be in \[0, 3\]"):
        PartiallyFrozenTextTower(backbone.model, 4)


def test_custom_text_tower_layout_is_found_under_text():
    from open_clip.model import CustomTextCLIP

    model = CustomTextCLIP(embed_dim=16, vision_cfg=TINY_CFG["vision_cfg"], text_cfg=TINY_CFG["text_cfg"])
    tower = PartiallyFrozenTextTower(model, 1)
    assert tower.layout.prefix == "text."
    keys = tower.trainable_keys()
    assert keys and all(
        k.startswith(("text.transformer.resblocks.2.", "text.ln_final.", "text.text_projection")) for k in keys
    )
    assert any(k.startswith("text.text_projection") for k in keys)


def test_only_the_last_blocks_and_heads_get_gradients_and_change(clip_dir):
    backbone = build_text_backbone(f"local-dir:{clip_dir}", allow_random_init=True, seed=1)
    model, _ = align_text3d.build_model(backbone, {**ALIGN, "trainable_blocks": 2}, SHAPE_DIM, seed=1, key="k")
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    trainable = set(model.text_tower.trainable_keys())
    assert trainable == {
        k
        for k in before
        if k.startswith(("transformer.resblocks.1.", "transformer.resblocks.2.", "ln_final.")) or k == "text_projection"
    }
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.01, betas=(0.9, 0.999))
    scales = {g.get("lr_scale", 1.0) for g in optimizer.param_groups}
    assert scales == {1.0, ALIGN["head_lr"] / ALIGN["lr"]}  # projection + temperature learn faster
    model.train()
    # the frozen part stays in eval mode whatever the loop asks; the unfrozen blocks follow train()
    assert not backbone.model.transformer.resblocks[0].training and not backbone.model.token_embedding.training
    assert backbone.model.transformer.resblocks[2].training and backbone.model.ln_final.training
    tokens = backbone.tokenizer([f"a {c}" for c in CLASSES])
    shapes = torch.randn(len(CLASSES), SHAPE_DIM, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        optimizer.zero_grad()
        loss, logs = model({"tokens": tokens, "shape": shapes})
        loss.backward()
        for name, param in backbone.model.named_parameters():
            assert (param.grad is not None) == (name in trainable), name
        optimizer.step()
        model.after_step()
    assert "temperature" in logs
    after = backbone.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable
    # checkpoints hold the trainable part only; loading them back is strict about it
    state = model.state_dict()
    assert {k.removeprefix("text_tower.model.") for k in state if k.startswith("text_tower.")} == trainable
    assert {k for k in state if not k.startswith("text_tower.")} >= {"loss.logit_scale", "projection.net.0.weight"}
    model.load_state_dict(state)
    with pytest.raises(RuntimeError, match="missing"):
        model.load_state_dict({k: v for k, v in state.items() if k != "projection.net.0.weight"})


def test_shapes_sharing_a_text_are_not_negatives_of_each_other(clip_dir):
    backbone = build_text_backbone(f"local-dir:{clip_dir}", allow_random_init=True, seed=1)
    model, _ = align_text3d.build_model(backbone, ALIGN, SHAPE_DIM, seed=1, key="k")
    shapes = torch.randn(4, SHAPE_DIM, generator=torch.Generator().manual_seed(0))
    # one class prompt for all four shapes: no negatives are left, so there is nothing to contrast
    same_prompt = backbone.tokenizer(["a chair"] * 4)
    loss, _ = model({"tokens": same_prompt, "shape": shapes})
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # two prompts, two shapes each: equal to the loss over the pairs that remain negatives
    tokens = backbone.tokenizer(["a chair", "a chair", "a lamp", "a lamp"])
    loss, _ = model({"tokens": tokens, "shape": shapes})
    with torch.no_grad():
        text, shape = model.text_tower.encode(tokens), model.projection(shapes)
        same = torch.tensor([[i // 2 == j // 2 for j in range(4)] for i in range(4)])
        expected = info_nce(shape, text, model.loss.scale(), same)
    assert loss.item() == pytest.approx(expected.item()) and loss.item() > 0


# ---- captions ----------------------------------------------------------------------------------------------------


def test_captions_pair_with_mesh_shapes_and_prompts_are_relevant_by_class(data):
    labels = dict(zip(*(pd.read_parquet(data["manifest"])[c] for c in ("shape_id", "label"))))
    table = manifest_captions(
        data["captions_manifest"], field="caption", shape_field="shape", mesh_dataset=DS, shape_labels=labels
    )
    assert len(table) == 2 * len(labels) and table.caption_ids == sorted(table.caption_ids)
    i = table.caption_ids.index("toy-img/chair/m03_v1")
    assert table.shape_ids[i] == f"{DS}/chair/m03" and table.texts[i] == "a chair seen from the side"
    rel = table.relevance([f"{DS}/chair/m03", f"{DS}/chair/m04"], [1, 1])
    assert rel[i].tolist() == [True, False]
    with pytest.raises(ValueError, match="no row has both"):
        manifest_captions(
            data["captions_manifest"], field="text", shape_field="shape", mesh_dataset=DS, shape_labels=labels
        )
    prompts = class_prompts(CLASSES, [1, 3, 1], ["a 3D model of a {}.", "a {}."])
    assert prompts.caption_ids == ["prompt/0001/00", "prompt/0001/01", "prompt/0003/00", "prompt/0003/01"]
    assert prompts.relevance([f"{DS}/chair/m00", f"{DS}/table/m00"], [1, 3]).tolist() == [
        [True, False],
        [True, False],
        [False, True],
        [False, True],
    ]
    assert prompts.candidates().of(f"{DS}/chair/m00", 1).tolist() == [0, 1]


def test_epoch_pairs_visit_every_shape_once_with_keyed_caption_draws():
    ids = [f"s{i}" for i in range(12)]
    cands = [np.array([2 * i, 2 * i + 1]) for i in range(12)]
    epochs = align_text3d.PairEpochs(ids, cands, seed=3, key="k")
    first, second = list(epochs.pairs(0)), list(epochs.pairs(1))
    assert sorted(s for s, _ in first) == list(range(12)) and first != second
    assert all(c in cands[s] for s, c in first + second)
    assert len({c for s, c in first + second + list(epochs.pairs(2)) + list(epochs.pairs(3))}) > 12  # both used
    # keyed by shape id, not position: the same shapes in another list order get the same order and captions
    again = align_text3d.PairEpochs(ids[::-1], cands[::-1], seed=3, key="k").pairs(0)
    assert [(ids[::-1][s], c) for s, c in again] == [(ids[s], c) for s, c in first]


# ---- training -------------------------------------------------------------------------------------------------


def test_training_raises_validation_recall_and_keeps_the_best_step(folds):
    for fold, out in folds.items():
        metrics = json.loads((out / "metrics.json").read_text())
        history = metrics["history"]
        assert [h["step"] for h in history] == [0, 8, 16, 24] and metrics["fold"] == fold
        assert metrics["val"]["score"] == max(h["score"] for h in history) > metrics["initial_val_score"] + 0.2
        best = next(h for h in history if h["step"] == metrics["best_step"])
        assert metrics["val"]["score"] == pytest.approx((best["t2m"]["R@5"] + best["m2t"]["R@5"]) / 2)
        assert set(metrics["val"]["t2m"]) == {"R@1", "R@5", "R@10"} == set(metrics["val"]["m2t"])
        assert metrics["val_shapes"] == 2 * len(CLASSES) and metrics["val_captions"] == 4 * len(CLASSES)
        assert metrics["protocol"]["fold"] == fold and "git" in metrics and "seconds" in metrics
        head = json.loads((out / "head.json").read_text())
        assert head["fold"] == fold and head["trainable_blocks"] == 2 and head["text"]["n_blocks"] == 3
        assert head["temperature"] == pytest.approx(metrics["temperature"])


def test_saved_text_weights_reload_into_a_fresh_tower_with_identical_features(folds, data, clip_dir):
    out = folds[0]
    head = json.loads((out / "head.json").read_text())
    loaded = load_alignment(
        out / "head.json", out / "projection.safetensors", out / "text_tower.safetensors", _text_cfg(clip_dir)
    )
    # the same model, trained in this process: rebuild it by rerunning the finished job (resumes at the end)
    params = _params(clip_dir, 0)
    run, result = align_text3d.run(params, data, out / "state", log=LOG)
    assert result.steps_run == 0 and run is not None
    texts = ["a 3D model of a chair", "a lamp seen from the side", "a boat"]
    tokens = loaded.backbone.tokenizer(texts)
    trained = align_text3d.encode_texts(run.model.text_tower, tokens)
    assert np.array_equal(align_text3d.encode_texts(loaded.tower, tokens), trained)
    base = build_text_backbone(f"local-dir:{clip_dir}", allow_random_init=True, seed=5)
    assert not np.allclose(align_text3d.encode_texts(PartiallyFrozenTextTower(base.model, 2), tokens), trained)
    vectors = np.random.default_rng(1).normal(size=(4, SHAPE_DIM)).astype(np.float32)
    assert np.array_equal(
        align_text3d.project_shapes(loaded.projection, vectors),
        align_text3d.project_shapes(run.model.projection, vectors),
    )
    assert sorted(head["text"]["trainable_keys"]) == sorted(run.model.text_tower.trainable_keys())
    # a projection from another fold does not pass for this one
    with pytest.raises(ValueError, match="sha256"):
        load_alignment(
            out / "head.json", folds[1] / "projection.safetensors", out / "text_tower.safetensors", _text_cfg(clip_dir)
        )
    with pytest.raises(ValueError, match="base text weights"):
        _load_with_other_seed(out, clip_dir)


def _load_with_other_seed(out: Path, clip_dir: Path):
    head = json.loads((out / "head.json").read_text())
    head["text"]["seed"] = 99  # a different random init: not the base weights it was trained from
    (out / "head_other.json").write_text(json.dumps(head))
    return load_alignment(
        out / "head_other.json", out / "projection.safetensors", out / "text_tower.safetensors", _text_cfg(clip_dir)
    )


def test_kill_and_resume_gives_the_uninterrupted_files_byte_for_byte(folds, data, clip_dir, tmp_path, monkeypatch):
    params = _params(clip_dir, 0)
    real_run = align_text3d.run
    with monkeypatch.context() as patch:
        # SIGTERM during step 10 -> stop after step 11 (mid-epoch, between evaluations): the best-so-far state must
        # survive the restart
        patch.setattr(align_text3d, "run", lambda *a, **kw: real_run(*a, **kw, extra_hooks=[SignalAt(10)]))
        assert _train_stage(params, data, tmp_path) == 75
    assert not (tmp_path / "projection.safetensors").exists()
    assert checkpoint.load(tmp_path / "state" / "last.ckpt")["step"] == 11
    assert _train_stage(params, data, tmp_path) == 0
    for name in ("projection.safetensors", "text_tower.safetensors"):
        assert (tmp_path / name).read_bytes() == (folds[0] / name).read_bytes(), name
    resumed, reference = (json.loads((p / "metrics.json").read_text()) for p in (tmp_path, folds[0]))
    assert resumed["history"] == reference["history"] and resumed["best_step"] == reference["best_step"]


# ---- submission -----------------------------------------------------------------------------------------------


def test_submission_ranks_every_test_item_once_with_the_best_fold(folds, data, clip_dir, tmp_path):
    params = {
        "seed": 5,
        "dataset": DS,
        "method": "nepa",
        "align": ALIGN,
        "text": _text_cfg(clip_dir),
        "folds": [0, 1],
        "stage_version": 1,
    }
    inputs = {
        "shape_embeddings": data["shape_embeddings"],
        "ttv": data["ttv"],
        "manifest": data["manifest"],
        "captions_manifest": data["captions_manifest"],
        # deliberately not in fold order: files are matched by fold and checksum
        "heads": [str(folds[f] / "head.json") for f in (1, 0)],
        "projections": [str(folds[f] / "projection.safetensors") for f in (0, 1)],
        "text_towers": [str(folds[f] / "text_tower.safetensors") for f in (1, 0)],
        "fold_metrics": [str(folds[f] / "metrics.json") for f in (0, 1)],
    }
    outs = {
        "t2m": tmp_path / "submission_text2mesh.csv",
        "m2t": tmp_path / "submission_mesh2text.csv",
        "metrics": tmp_path / "metrics.json",
    }
    code = submit_stage.main(
        [
            "--params",
            json.dumps(params),
            "--inputs",
            json.dumps(inputs),
            "--text2mesh",
            str(outs["t2m"]),
            "--mesh2text",
            str(outs["m2t"]),
            "--metrics",
            str(outs["metrics"]),
        ]
    )
    assert code == 0
    scores = {f: json.loads((folds[f] / "metrics.json").read_text())["val"]["score"] for f in (0, 1)}
    metrics = json.loads(outs["metrics"].read_text())
    assert metrics["fold"] == submit_text3d.choose_fold([{"fold": f, "val": {"score": s}} for f, s in scores.items()])

    ttv = pd.read_parquet(data["ttv"])
    test_ids = set(ttv.loc[ttv["split"] == "test", "shape_id"])
    caps = pd.read_parquet(data["captions_manifest"])
    test_caps = {
        cid for cid, meta in zip(caps["shape_id"], caps["meta"]) if f"{DS}/{json.loads(meta)['shape']}" in test_ids
    }
    t2m = pd.read_csv(outs["t2m"])
    assert list(t2m.columns) == ["query_id", "query_text"] + [f"rank_{i}" for i in range(1, 11)]
    assert sorted(t2m["query_id"]) == sorted(test_caps) and t2m["query_id"].is_unique
    ranked = t2m[[f"rank_{i}" for i in range(1, 11)]].to_numpy()
    assert set(ranked.ravel()) <= test_ids and all(len(set(row)) == 10 for row in ranked)
    m2t = pd.read_csv(outs["m2t"])
    assert list(m2t.columns) == ["query_id"] + [f"rank_{i}" for i in range(1, 11)]
    assert sorted(m2t["query_id"]) == sorted(test_ids) and m2t["query_id"].is_unique
    assert set(m2t.drop(columns="query_id").to_numpy().ravel()) <= test_caps
    # the recorded test recall agrees with the rankings
    cap_shape = {cid: f"{DS}/{json.loads(meta)['shape']}" for cid, meta in zip(caps["shape_id"], caps["meta"])}
    hits5 = np.mean([cap_shape[q] in set(row[:5]) for q, row in zip(t2m["query_id"], ranked)])
    assert metrics["test"]["t2m"]["R@5"] == pytest.approx(hits5)
    assert set(metrics["test"]["t2m"]) == {"R@1", "R@3", "R@5", "R@10"} == set(metrics["test"]["m2t"])
    assert metrics["test_shapes"] == len(test_ids) and metrics["test_captions"] == len(test_caps)


def test_submission_depth_shrinks_to_small_galleries():
    sim = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.2]])
    assert submit_text3d.rankings(sim, ["a", "b", "c"], 3) == [["b", "c", "a"], ["a", "b", "c"]]  # ties: id order
    assert (
        submit_text3d.choose_fold(
            [
                {"fold": 2, "val": {"score": 0.5}},
                {"fold": 1, "val": {"score": 0.5}},
                {"fold": 0, "val": {"score": 0.25}},
            ]
        )
        == 1
    )


def test_without_a_caption_dataset_class_prompts_train_and_are_relevant_by_class(data, clip_dir, tmp_path):
    params = _params(clip_dir, 2, captions=None, steps=4, eval_every=4)
    files = {k: v for k, v in data.items() if k != "captions_manifest"}
    run, result = align_text3d.run(params, files, tmp_path / "state", log=LOG)
    assert result.steps == 4 and run.metrics["caption_source"] == "class prompts"
    # every class has val shapes: 2 templates x 8 classes queries; each shape's relevant texts are its class prompts
    assert run.metrics["val_captions"] == 2 * len(CLASSES)
    assert all(np.isfinite(h["score"]) for h in run.metrics["history"])
    with pytest.raises(ValueError, match="no captions_manifest input"):
        align_text3d.run(_params(clip_dir, 2), files, tmp_path / "other", log=LOG)
