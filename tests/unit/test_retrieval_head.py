"""PromptSG-style retrieval head: pseudo-token prompts, losses, training, resume, export (tiny random CLIP)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline3d.embed import backbones
from pipeline3d.embed.backbones import build_text_backbone
from pipeline3d.embed.retrieval_head import RetrievalModel, load_retrieval_head
from pipeline3d.embed.vectors import write_vectors
from pipeline3d.jobs import retrieval_head
from pipeline3d.jobs.retrieval_head import RetrievalObjective, pk_indices
from pipeline3d.models import pseudo_prompt
from pipeline3d.models.pseudo_prompt import encode_with_pseudo_tokens, prepare_template, text_tower, word_embeddings
from pipeline3d.stages import train_retrieval_head
from train_hooks import SignalAt

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TEMPLATE = "a 3D model of a {} object"
N_CLASSES, PER_CLASS, N_TRAIN, SIGNAL, NOISE = 6, 48, 40, 4, 28


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tinyclip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    return folder


@pytest.fixture(scope="module")
def tiny_text(clip_dir):
    return build_text_backbone(f"local-dir:{clip_dir}", allow_random_init=True, seed=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Class-clustered vectors whose class signal (4 dims) is swamped by 28 dims of large noise."""
    root = tmp_path_factory.mktemp("rh_data")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(N_CLASSES, SIGNAL)) * 2.0
    ids, vecs, rows = [], [], []
    for c in range(N_CLASSES):
        for i in range(PER_CLASS):
            sid = f"syn/c{c}/s{i:02d}"
            signal_part = centres[c] + 0.3 * rng.normal(size=SIGNAL)
            vecs.append(np.concatenate([signal_part, 4.0 * rng.normal(size=NOISE)]))
            ids.append(sid)
            rows.append(
                {
                    "shape_id": sid,
                    "label": c,
                    "label_name": f"class{c}",
                    "split": "train" if i < N_TRAIN else "test",
                    "group": sid,
                }
            )
    table = pd.DataFrame(rows)
    write_vectors(
        root / "emb.parquet",
        ids,
        np.asarray(vecs, np.float32),
        {"model": "synthetic", "weights_sha256": "0" * 64, "preprocessing": "{}"},
    )
    table[["shape_id", "label", "label_name"]].to_parquet(root / "manifest.parquet")
    table[["shape_id", "label", "split", "group"]].to_parquet(root / "ttv.parquet")
    test = table[table["split"] == "test"]
    qg = []
    for split_id in range(10):
        r = np.random.default_rng(100 + split_id)
        for c, part in test.groupby("label"):
            query = part["shape_id"].iloc[int(r.integers(len(part)))]
            qg += [
                {"split_id": split_id, "shape_id": s, "label": c, "role": "query" if s == query else "gallery"}
                for s in part["shape_id"]
            ]
    pd.DataFrame(qg).to_parquet(root / "qg.parquet")
    files = {
        "shape_embeddings": str(root / "emb.parquet"),
        "manifest": str(root / "manifest.parquet"),
        "ttv": str(root / "ttv.parquet"),
        "qg": str(root / "qg.parquet"),
    }
    return files, dict(zip(ids, np.asarray(vecs, np.float32)))


def _params(clip_dir, *, steps=150, ti=False, weights=None, **head):
    return {
        "seed": 3,
        "dataset": "syn",
        "method": "nepa",
        "stage_version": 1,
        "head": {
            "neck_dim": 16,
            "arcface": {"margin": 0.3, "scale": 16.0},
            "loss_weights": weights or {"ce": 1.0, "triplet": 1.0, "supcon": 0.5},
            "triplet_margin": 0.3,
            "supcon_temperature": 0.1,
            "textual_inversion": {"enabled": ti, "n_tokens": 2, "template": TEMPLATE, "weight": 0.5},
            "steps": steps,
            "batch_size": 24,
            "lr": 1e-2,
            **head,
        },
        "text": {
            "name": "clip-tiny",
            "model": f"local-dir:{clip_dir}",
            "weights": None,
            "random_init": True,
            "templates": ["a 3D model of a {}."],
            "batch_size": 64,
            "datasets": [],
        },
    }


def _main(params, files, tmp, name="out", threads=1):
    out = tmp / name
    argv = [
        "--params",
        json.dumps(params),
        "--inputs",
        json.dumps(files),
        "--state-dir",
        str(out / "state"),
        "--threads",
        str(threads),
        "--head",
        str(out / "head.safetensors"),
        "--head-json",
        str(out / "head.json"),
        "--metrics",
        str(out / "metrics.json"),
    ]
    return train_retrieval_head.main(argv), out


# ---- pseudo-token prompts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("short_pass", [True, False])  # causal shortcut (prompt positions only) or all 77
@pytest.mark.parametrize("word", ["chair", "nightstand", "xylophone"])  # 1, 2 and 3 BPE tokens
def test_pseudo_tokens_of_the_real_word_reproduce_encode_text(tiny_text, word, short_pass, monkeypatch):
    if not short_pass:
        monkeypatch.setattr(pseudo_prompt, "_is_causal", lambda mask: False)
    pieces = word_embeddings(tiny_text, word)
    with torch.no_grad():
        spliced = encode_with_pseudo_tokens(tiny_text, TEMPLATE, pieces[None].repeat(3, 1, 1))
        direct = tiny_text.model.encode_text(tiny_text.tokenizer([TEMPLATE.format(word)]))
    assert spliced.shape == (3, tiny_text.dim)
    torch.testing.assert_close(spliced, direct.expand(3, -1), atol=1e-5, rtol=0)
    # another word's tokens give another sentence's feature: the splice is not ignored
    with torch.no_grad():
        other = encode_with_pseudo_tokens(tiny_text, TEMPLATE, word_embeddings(tiny_text, "lamp")[None])
    assert (other - direct).abs().max() > 1e-3


def test_pseudo_tokens_get_gradients_and_bad_layouts_are_refused(tiny_text):
    pseudo = torch.randn(2, 1, text_tower(tiny_text.model).width, requires_grad=True)
    encode_with_pseudo_tokens(tiny_text, TEMPLATE, pseudo).sum().backward()
    assert pseudo.grad is not None and pseudo.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_text.model.parameters())  # the tower stays frozen
    with pytest.raises(ValueError, match="exactly one"):
        prepare_template(tiny_text.tokenizer, "a model of a chair")
    with pytest.raises(ValueError, match="occurs 2 times"):
        prepare_template(tiny_text.tokenizer, "a * model of a {} object")
    with pytest.raises(ValueError, match="n_tokens"):
        encode_with_pseudo_tokens(tiny_text, TEMPLATE, torch.zeros(2, 1, 7))

    class HFLike:
        model = torch.nn.Module()
        tokenizer = tiny_text.tokenizer

    HFLike.model.text = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="CLIP-style"):
        encode_with_pseudo_tokens(HFLike(), TEMPLATE, torch.zeros(1, 1, 32))


# ---- batches and losses -----------------------------------------------------------------------------------------


def test_pk_batches_come_from_the_generator():
    rows = [torch.arange(0, 6), torch.arange(6, 8), torch.arange(8, 20)]
    draw = lambda seed: pk_indices(rows, 2, 4, torch.Generator().manual_seed(seed))  # noqa: E731
    a, b = draw(1), draw(1)
    assert torch.equal(a, b) and a.shape == (8,)
    labels = torch.tensor([0] * 6 + [1] * 2 + [2] * 12)[a]
    assert len(set(labels.tolist())) == 2 and all((labels == c).sum() == 4 for c in set(labels.tolist()))
    assert any(not torch.equal(draw(1), draw(s)) for s in range(2, 6))


def _objective(tiny_text, weights, text_weight=0.5):
    torch.manual_seed(0)
    tower = text_tower(tiny_text.model)
    model = RetrievalModel(12, 8, 4, margin=0.3, scale=16.0, token_dim=tower.width, text_dim=tiny_text.dim, n_tokens=1)
    x = torch.randn(40, 12)
    y = torch.arange(40) % 4
    return RetrievalObjective(
        model,
        x,
        y,
        k=4,
        p=4,
        weights=weights,
        triplet_margin=0.3,
        supcon_temperature=0.1,
        text_backbone=tiny_text,
        prompt=prepare_template(tiny_text.tokenizer, TEMPLATE),
        text_weight=text_weight,
    )


def _grads(objective):
    objective.zero_grad(set_to_none=False)
    loss, logs = objective(None, step=0, total_steps=1, generator=torch.Generator().manual_seed(9))
    loss.backward()
    logs = {k: float(v) for k, v in logs.items()}  # scalar tensors left on the device by the objective
    return (
        loss,
        logs,
        {
            n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for n, p in objective.named_parameters()
            if p.requires_grad
        },
    )


def test_every_term_is_logged_and_a_zero_weight_removes_its_gradient(tiny_text):
    weights = {"ce": 1.0, "triplet": 0.7, "supcon": 0.5}
    loss, logs, full = _grads(_objective(tiny_text, weights, text_weight=0.3))
    assert {"ce", "triplet", "supcon", "text_align"} <= set(logs)
    total = sum(w * logs[t] for t, w in weights.items()) + 0.3 * logs["text_align"]
    assert float(loss.detach()) == pytest.approx(total, rel=1e-5)
    per_term = {}
    for term in ("ce", "triplet", "supcon", "text_align"):
        only = {t: (1.0 if t == term else 0.0) for t in weights}
        _, term_logs, per_term[term] = _grads(
            _objective(tiny_text, only, text_weight=1.0 if term == "text_align" else 0.0)
        )
        assert term_logs[term] == pytest.approx(logs[term], rel=1e-6)  # still logged at weight 0 for the others
    # gradients are linear in the weights: dropping a term (weight 0) removes exactly its contribution
    scale = {**weights, "text_align": 0.3}
    for name, grad in full.items():
        torch.testing.assert_close(grad, sum(scale[t] * per_term[t][name] for t in per_term), atol=1e-5, rtol=1e-4)
    _, _, no_ce = _grads(_objective(tiny_text, {**weights, "ce": 0.0}, text_weight=0.3))
    assert no_ce["model.arcface.weight"].abs().max() == 0  # ArcFace is only reached through the CE term
    assert full["model.arcface.weight"].abs().max() > 0
    _, _, no_text = _grads(_objective(tiny_text, weights, text_weight=0.0))
    assert no_text["model.inversion.net.0.weight"].abs().max() == 0
    assert full["model.inversion.net.0.weight"].abs().max() > 0


# ---- the stage ----------------------------------------------------------------------------------------------------


def test_training_beats_raw_embeddings_and_export_round_trips(data, clip_dir, tmp_path, monkeypatch):
    files, vectors = data

    def no_text_tower(*args, **kwargs):
        raise AssertionError("textual inversion is off: no text tower may be built")

    monkeypatch.setattr(backbones, "build_text_backbone", no_text_tower)
    code, out = _main(_params(clip_dir), files, tmp_path)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    raw, head = metrics["raw"], metrics["head"]
    assert raw["n_splits"] == head["n_splits"] == 10 and len(head["per_split"]) == 10
    assert raw["mAP"] < 0.6 and head["mAP"] > raw["mAP"] + 0.2, (raw["mAP"], head["mAP"])
    assert head["rank@1"] >= raw["rank@1"] and set(head) >= {"rank@1", "rank@5", "rank@10", "mAP", "std"}
    assert metrics["protocol"]["head"]["steps"] == 150 and "git" in metrics and "seconds" in metrics
    log_lines = [json.loads(line) for line in (out / "state" / "train_log.jsonl").read_text().splitlines()]
    assert all({"ce", "triplet", "supcon"} <= set(line) for line in log_lines) and "text_align" not in log_lines[-1]

    sidecar = json.loads((out / "head.json").read_text())
    assert sidecar["text"] is None and sidecar["class_names"] == [f"class{c}" for c in range(N_CLASSES)]
    assert sidecar["arcface"] == {"margin": 0.3, "scale": 16.0, "n_classes": N_CLASSES}
    assert sidecar["config"]["in_dim"] == SIGNAL + NOISE and sidecar["embedding"]["dim"] == 16
    head_model = load_retrieval_head(out / "head.safetensors", out / "head.json")
    ids = sorted(vectors)
    first = head_model.embed(np.stack([vectors[i] for i in ids]))
    again = load_retrieval_head(out / "head.safetensors", out / "head.json").embed(np.stack([vectors[i] for i in ids]))
    assert first.shape == (len(ids), 16) and first.dtype == np.float32 and np.array_equal(first, again)
    # the published head reproduces the stage's own evaluation
    from pipeline3d.eval.retrieval import qg_rank_map

    again_metrics = qg_rank_map((ids, first), None, pd.read_parquet(files["qg"]))
    assert again_metrics["mAP"] == pytest.approx(head["mAP"], abs=1e-6)
    (out / "head.safetensors").write_bytes((out / "head.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="sha256"):
        load_retrieval_head(out / "head.safetensors", out / "head.json")


def test_sigterm_then_resume_gives_the_uninterrupted_head_byte_for_byte(data, clip_dir, tmp_path, monkeypatch):
    files, _ = data
    params = _params(clip_dir, steps=12, ti=True, checkpoint_every=5)
    code, reference = _main(params, files, tmp_path, "reference")
    assert code == 0

    real_train = retrieval_head.train
    with monkeypatch.context() as patch:
        patch.setattr(retrieval_head, "train", lambda *a, **kw: real_train(*a, **{**kw, "hooks": [SignalAt(every=4)]}))
        code, resumed = _main(params, files, tmp_path, "resumed")
    assert code == 75 and not (resumed / "head.safetensors").exists()
    code, resumed = _main(params, files, tmp_path, "resumed")
    assert code == 0
    assert (resumed / "head.safetensors").read_bytes() == (reference / "head.safetensors").read_bytes()
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["head"] == ref_metrics["head"]
    sidecar = json.loads((resumed / "head.json").read_text())
    assert (
        sidecar["text"]["weights_sha256"]
        == backbones.build_text_backbone(f"local-dir:{clip_dir}", allow_random_init=True, seed=3).weights.sha256
    )
    assert sidecar["text"]["n_tokens"] == 2 and sidecar["text"]["template"] == TEMPLATE
    log_lines = [json.loads(line) for line in (resumed / "state" / "train_log.jsonl").read_text().splitlines()]
    assert all({"ce", "triplet", "supcon", "text_align"} <= set(line) for line in log_lines)
    loaded = load_retrieval_head(resumed / "head.safetensors", resumed / "head.json")
    assert loaded.inversion is not None and loaded.to_text is not None


def _pc_cache(root, ids, seed=0):
    """A point-cloud item cache (``pc_xyz`` only) of the shapes: class c is one of six geometries, randomly posed,
    scaled and noisy."""
    from pipeline3d.io.shards import ShardWriter

    rng = np.random.default_rng(seed)
    stretch = [(1, 1, 1), (1, 1, 0.05), (1, 0.3, 0.3), (1, 1, 1), (1, 1, 0.1), (1, 0.05, 0.05)]
    n = 256
    with ShardWriter(
        root / "shard-0000.h5",
        dataset="syn",
        shard=0,
        n_shards=1,
        kind="pointcloud",
        profile={"pc_points": n},
        keys=("pc_xyz",),
        compression="none",
    ) as writer:
        for sid in ids:
            c = int(sid.split("/")[1][1:])
            p = rng.normal(size=(n, 3))
            if c >= 3:  # box surfaces
                p = rng.uniform(-1, 1, (n, 3))
                p[np.arange(n), rng.integers(0, 3, n)] = rng.choice([-1.0, 1.0], n)
            else:  # ellipsoid surfaces
                p /= np.linalg.norm(p, axis=1, keepdims=True)
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            p = (p * stretch[c] + 0.01 * rng.normal(size=(n, 3))) @ q.T * rng.uniform(0.5, 2.0)
            writer.append(sid, {"pc_xyz": p.astype(np.float32)})
    pd.DataFrame({"shape_id": ids, "shard": 0, "shard_file": "shard-0000.h5", "row": range(len(ids))}).to_parquet(
        root / "index.parquet"
    )
    return {"index": str(root / "index.parquet"), "shards": [str(root / "shard-0000.h5")]}


def test_descriptor_floor_is_evaluated_on_the_same_splits_from_the_cache(data, clip_dir, tmp_path, monkeypatch):
    from pipeline3d.eval import descriptor

    files, vectors = data
    monkeypatch.setitem(descriptor.DEFAULTS, "n_pairs", 1024)  # fast draws; the layout is the same
    monkeypatch.setitem(descriptor.DEFAULTS, "n_triples", 1024)
    cache = _pc_cache(tmp_path, sorted(vectors))
    code, out = _main(_params(clip_dir, steps=4), {**files, **cache}, tmp_path)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    floor, raw = metrics["descriptor_raw"], metrics["raw"]
    assert floor["n_splits"] == 10 and len(floor["per_split"]) == 10 and floor["per_split"][0]["n_query"] == N_CLASSES
    assert floor["descriptor"]["backend"] == "pointcloud_noray" and floor["descriptor"]["n_pairs"] == 1024
    assert floor["mAP"] > raw["mAP"] + 0.2 and floor["mAP"] > 0.7, (floor["mAP"], raw["mAP"])  # geometry, not noise
    code, out = _main(_params(clip_dir, steps=4), files, tmp_path, "nocache")  # without the cache: no floor
    assert code == 0 and "descriptor_raw" not in json.loads((out / "metrics.json").read_text())


def test_bad_inputs_fail_with_a_clear_error(data, clip_dir, tmp_path, capfd):
    files, _ = data
    code, _ = _main(_params(clip_dir, steps=2), {**files, "ttv": str(tmp_path / "missing.parquet")}, tmp_path)
    assert code == 1 and "missing.parquet" in capfd.readouterr().err
    code, _ = _main(_params(clip_dir, steps=2, batch_size=4), files, tmp_path, "small")
    assert code == 1 and "fewer than 2 classes" in capfd.readouterr().err
    code, _ = _main(_params(clip_dir, steps=2), {k: v for k, v in files.items() if k != "qg"}, tmp_path, "noqg")
    assert code == 1 and "lacks ['qg']" in capfd.readouterr().err
