"""The embedding stages end to end (embed_image, embed_text, embed_shape, difficulty_bands) on tiny real inputs.

Inputs: a tiny real mesh cache (tokens_fixtures), a random-init query_nepa encoder exported with save_encoder, a tiny
image item store, a tiny timm ViT and a tiny open_clip text tower (random init, local-dir config).
"""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest

from image_fixtures import write_image_dataset
from pipeline3d.embed.difficulty import read_difficulty_metadata
from pipeline3d.embed.vectors import read_vectors, write_vectors
from pipeline3d.jobs import embed_image as jobs_embed_image
from pipeline3d.jobs import embed_shape as jobs_embed_shape
from pipeline3d.jobs import embed_text as jobs_embed_text
from pipeline3d.stages import difficulty_bands, embed_image, embed_shape, embed_text
from test_embed_text import TINY_CFG
from tokens_fixtures import LABELS, PROFILE, write_labelled_mesh_dataset

PRETRAIN_TOKENS = {"n_point": 24, "n_ray": 12, "qa_tokens": True, "add_eos": True, "eval_seed": 0}
IMAGE_CFG = {
    "name": "vit-tiny",
    "model": "vit_tiny_patch16_224",
    "weights": None,
    "random_init": True,
    "img_size": 32,
    "model_kwargs": {"depth": 1},
    "batch_size": 4,
    "views": 2,
}
CLASS_NAMES = {0: "ring", 1: "solid"}


@pytest.fixture(scope="module")
def mesh_ds(tmp_path_factory):
    """Cache (index, shards), manifest, ttv (two shapes in one near-duplicate group) and an exported encoder."""
    root = tmp_path_factory.mktemp("meshds")
    split = dict(zip(sorted(LABELS), ["train", "train", "val", "test", "test"]))
    return write_labelled_mesh_dataset(
        root, split, CLASS_NAMES, PRETRAIN_TOKENS, groups={"ds/solid/capsule": "ds/solid/ball"}
    )


@pytest.fixture(scope="module")
def image_ds(tmp_path_factory):
    """Six PNG items in two classes; four have captions (two views of one object share a caption)."""
    root = tmp_path_factory.mktemp("imgds")
    rng = np.random.default_rng(0)

    def item(k: int):
        name = "chair" if k < 3 else "lamp"
        meta = {"caption": f"a {name} number {k // 2}", "shape": f"{name}/m{k // 2}"} if k not in (2, 5) else {}
        return f"img/{name}/v{k}", int(k >= 3), name, rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), meta

    return write_image_dataset(root, (item(k) for k in range(6)))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    return folder


def _run(stage, params, inputs, *flags):
    return stage.main(["--params", json.dumps(params), "--inputs", json.dumps(inputs), *map(str, flags)])


def _errors(capfd) -> str:
    """The ERROR lines the stage logged (stage logging writes to stderr)."""
    return " ".join(line for line in capfd.readouterr().err.splitlines() if "| ERROR |" in line)


def _shape_params(**shape):
    cfg = {"backend": "mesh", "n_point": 16, "n_ray": 8, "mc_draws": 2, "batch_size": 3, "pool": "mean"} | shape
    return {
        "seed": 0,
        "dataset": "ds",
        "method": "nepa",
        "shape": cfg,
        "tokens": PRETRAIN_TOKENS,
        "model": {"encoder": "query_nepa_tiny"},
        "eval_seed": 0,
        "stage_version": 1,
    }


# ---- embed_image -----------------------------------------------------------------------------------------------


def test_embed_image_items(tmp_path, image_ds, no_network):
    out = tmp_path / "img.parquet"
    params = {"seed": 0, "dataset": "img", "kind": "image", "image": IMAGE_CFG, "stage_version": 1}
    assert _run(embed_image, params, image_ds, "--out", out) == 0
    emb = read_vectors(out)
    assert emb.ids == sorted(pd.read_parquet(image_ds["manifest"])["shape_id"])
    assert emb.vectors.shape == (6, 192) and np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert emb.columns["label"] == [0, 0, 0, 1, 1, 1]
    assert emb.metadata["model"] == "vit_tiny_patch16_224" and emb.metadata["kind"] == "image"
    assert emb.metadata["dataset"] == "img" and len(emb.metadata["weights_sha256"]) == 64
    assert json.loads(emb.metadata["preprocessing"])["input_size"] == [3, 32, 32]
    # the random images are distinct, so are their vectors
    assert len({v.tobytes() for v in emb.vectors}) == 6


def test_embed_image_depth_views(tmp_path, mesh_ds, no_network):
    out = tmp_path / "views.parquet"
    params = {
        "seed": 0,
        "dataset": "ds",
        "kind": "depth_views",
        "image": IMAGE_CFG,
        "cache": {"shards": 2},
        "stage_version": 1,
    }
    inputs = {k: mesh_ds[k] for k in ("manifest", "index", "shards")}
    assert _run(embed_image, params, inputs, "--out", out) == 0
    emb = read_vectors(out)
    chosen = [0, PROFILE.n_views // 2]  # 2 evenly spaced views of the cache's 4
    assert emb.ids == [f"{sid}#view{v}" for sid in sorted(LABELS) for v in chosen]
    assert emb.columns["shape_id"] == [sid for sid in sorted(LABELS) for _ in chosen]
    assert emb.columns["view"] == chosen * len(LABELS)
    assert emb.columns["label"] == [LABELS[sid] for sid in sorted(LABELS) for _ in chosen]
    assert json.loads(emb.metadata["views"]) == chosen and emb.metadata["kind"] == "depth_views"
    # different camera views of a shape render different depth images
    assert not np.array_equal(emb.vectors[0], emb.vectors[1])


def test_missing_image_weights_fail_naming_the_config_key(tmp_path, image_ds, capfd, no_network):
    missing = tmp_path / "nowhere" / "vit.safetensors"
    params = {
        "seed": 0,
        "dataset": "img",
        "kind": "image",
        "image": IMAGE_CFG | {"weights": str(missing)},
        "stage_version": 1,
    }
    assert _run(embed_image, params, image_ds, "--out", tmp_path / "x.parquet") == 1
    errors = _errors(capfd)
    assert "embed.image.weights" in errors and str(missing) in errors
    assert not (tmp_path / "x.parquet").exists()


# ---- embed_text ------------------------------------------------------------------------------------------------


def _text_params(clip_dir, dataset):
    return {
        "seed": 0,
        "dataset": dataset,
        "stage_version": 1,
        "text": {
            "name": "clip-tiny",
            "model": f"local-dir:{clip_dir}",
            "weights": None,
            "random_init": True,
            "templates": ["a 3D model of a {}.", "a photo of a {}."],
            "batch_size": 4,
        },
    }


def test_embed_text_captions_and_prompts(tmp_path, image_ds, clip_dir, no_network):
    out, cache = tmp_path / "text.parquet", tmp_path / "cache"
    assert (
        _run(
            embed_text,
            _text_params(clip_dir, "img"),
            {"manifest": image_ds["manifest"]},
            "--out",
            out,
            "--cache-dir",
            cache,
        )
        == 0
    )
    emb = read_vectors(out)
    kinds = dict(zip(emb.ids, emb.columns["kind"]))
    captioned = ["img/chair/v0", "img/chair/v1", "img/lamp/v3", "img/lamp/v4"]
    # items v2 (chair) and v5 (lamp) have no caption: their classes get one prompt per template
    prompts = ["class:chair#t0", "class:chair#t1", "class:lamp#t0", "class:lamp#t1"]
    assert sorted(emb.ids) == sorted(captioned + prompts) and len(set(emb.ids)) == len(emb.ids)
    assert all(kinds[i] == "caption" for i in captioned) and all(kinds[i] == "prompt" for i in prompts)
    row = {i: r for r, i in enumerate(emb.ids)}
    assert emb.columns["text"][row["img/chair/v1"]] == "a chair number 0"
    assert emb.columns["shape_id"][row["img/chair/v1"]] == "chair/m0"
    assert emb.columns["text"][row["class:lamp#t1"]] == "a photo of a lamp."
    assert emb.columns["label"][row["class:lamp#t1"]] == 1 and emb.columns["shape_id"][row["class:lamp#t1"]] is None
    # v0 and v1 show the same object with the same caption: the same vector
    assert np.array_equal(emb.vectors[row["img/chair/v0"]], emb.vectors[row["img/chair/v1"]])
    assert emb.vectors.shape[1] == TINY_CFG["embed_dim"] and emb.metadata["model"] == f"local-dir:{clip_dir}"
    assert any(cache.rglob("part-*.parquet"))  # vectors kept for the next job


def test_embed_text_mesh_dataset_gets_class_prompts(tmp_path, mesh_ds, clip_dir, no_network):
    out = tmp_path / "text.parquet"
    assert (
        _run(
            embed_text,
            _text_params(clip_dir, "ds"),
            {"manifest": mesh_ds["manifest"]},
            "--out",
            out,
            "--cache-dir",
            tmp_path / "cache",
        )
        == 0
    )
    emb = read_vectors(out)
    assert emb.ids == ["class:ring#t0", "class:ring#t1", "class:solid#t0", "class:solid#t1"]
    assert set(emb.columns["kind"]) == {"prompt"} and emb.columns["label"] == [0, 0, 1, 1]
    assert emb.columns["template"][1] == "a photo of a {}."


# ---- embed_shape -----------------------------------------------------------------------------------------------


def test_embed_shape_every_cached_shape_reproducibly(tmp_path, mesh_ds, no_network):
    a, b, c = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    assert _run(embed_shape, _shape_params(), mesh_ds, "--out", a) == 0
    assert _run(embed_shape, _shape_params(), mesh_ds, "--out", b) == 0
    assert _run(embed_shape, _shape_params(batch_size=7), mesh_ds, "--out", c) == 0
    emb = read_vectors(a)
    assert emb.ids == sorted(LABELS)  # every split
    assert emb.columns["split"] == ["train", "train", "val", "test", "test"]
    assert emb.columns["label"] == [LABELS[s] for s in emb.ids]
    assert emb.vectors.shape == (5, 16) and np.allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-6)
    assert a.read_bytes() == b.read_bytes()
    assert np.array_equal(emb.vectors, read_vectors(c).vectors)  # batch composition does not matter
    meta = emb.metadata
    sidecar = json.loads(open(mesh_ds["encoder_json"]).read())
    assert meta["model"] == "query_nepa_tiny" and meta["weights_sha256"] == sidecar["sha256"]
    assert meta["method"] == "nepa" and meta["backend"] == "mesh" and meta["mc_draws"] == "2" and meta["pool"] == "mean"
    tok = json.loads(meta["preprocessing"])
    assert (tok["n_point"], tok["n_ray"], tok["layout_n_point"], tok["layout_n_ray"]) == (16, 8, 24, 12)


def test_embed_shape_tokenizes_in_workers_with_the_same_bytes(tmp_path, mesh_ds, no_network):
    """--threads 3: one torch thread and two DataLoader workers building the 4 batches (5 shapes x 2 draws, 3 pairs
    per batch); the file is byte for byte the single-process one."""
    one, three = tmp_path / "one.parquet", tmp_path / "three.parquet"
    assert _run(embed_shape, _shape_params(), mesh_ds, "--out", one, "--threads", 1) == 0
    assert _run(embed_shape, _shape_params(), mesh_ds, "--out", three, "--threads", 3) == 0
    assert one.read_bytes() == three.read_bytes()


def test_embed_shape_draws_and_pool_change_the_vectors(tmp_path, mesh_ds, no_network):
    base, one, eos = tmp_path / "base.parquet", tmp_path / "one.parquet", tmp_path / "eos.parquet"
    for path, params in ((base, _shape_params()), (one, _shape_params(mc_draws=1)), (eos, _shape_params(pool="eos"))):
        assert _run(embed_shape, params, mesh_ds, "--out", path) == 0
    vec = {p: read_vectors(p).vectors for p in (base, one, eos)}
    assert not np.allclose(vec[base], vec[one]) and not np.allclose(vec[base], vec[eos])


def test_embed_shape_missing_weights(tmp_path, mesh_ds, capfd, no_network):
    inputs = mesh_ds | {"weights": str(tmp_path / "gone.safetensors")}
    assert _run(embed_shape, _shape_params(), inputs, "--out", tmp_path / "x.parquet") == 1
    errors = _errors(capfd)
    assert "'weights'" in errors and "gone.safetensors" in errors


# ---- difficulty_bands ------------------------------------------------------------------------------------------

DIFFICULTY = {"by": "rank", "bands": {"hard": [1, 1], "easy": [2, 3]}, "identity": "label", "metric": "cosine"}


def _bands(tmp_path, vectors_path, mesh_ds, **cfg):
    out = tmp_path / f"bands-{len(list(tmp_path.iterdir()))}.parquet"
    params = {"seed": 0, "space": "shape/ds/nepa", "difficulty": DIFFICULTY | cfg, "stage_version": 1}
    inputs = {"embeddings": str(vectors_path), "manifest": mesh_ds["manifest"], "ttv": mesh_ds["ttv"]}
    assert _run(difficulty_bands, params, inputs, "--out", out) == 0
    return pd.read_parquet(out), read_difficulty_metadata(out)


def _synthetic_views(path, n_shapes=6, views=3):
    """Views of a shape nearly equal (they would be each other's nearest neighbours without the shape rule)."""
    rng = np.random.default_rng(1)
    ids, shapes, vecs = [], [], []
    sids = sorted(LABELS) + ["ds/extra/x"]
    for sid in sids[:n_shapes]:
        base = rng.normal(size=8)
        for v in range(views):
            ids.append(f"{sid}#view{v}")
            shapes.append(sid)
            vecs.append(base + 0.01 * rng.normal(size=8))
    write_vectors(
        path,
        ids,
        np.asarray(vecs),
        {"model": "m", "weights_sha256": "0", "preprocessing": "{}"},
        id_column="id",
        columns={"shape_id": shapes},
    )
    return dict(zip(ids, shapes))


def test_difficulty_bands_exclude_same_identity(tmp_path, mesh_ds):
    emb_path = tmp_path / "shape.parquet"
    assert _run(embed_shape, _shape_params(), mesh_ds, "--out", emb_path) == 0
    table, meta = _bands(tmp_path, emb_path, mesh_ds)
    labels = {sid: LABELS[sid] for sid in LABELS}
    assert len(table) and all(labels[a] != labels[n] for a, n in zip(table["anchor_id"], table["neighbour_id"]))
    assert meta["metric"] == "cosine" and meta["k"] == 3 and meta["identity"] == "label"
    assert meta["bands"] == {"by": "rank", "bands": {"hard": [1, 1], "easy": [2, 3]}}
    # group identity: ball and capsule are one near-duplicate group, so never neighbours; same-label pairs appear
    table, _ = _bands(tmp_path, emb_path, mesh_ds, identity="group")
    pairs = set(zip(table["anchor_id"], table["neighbour_id"]))
    assert ("ds/solid/ball", "ds/solid/capsule") not in pairs and ("ds/solid/capsule", "ds/solid/ball") not in pairs
    assert any(labels[a] == labels[n] for a, n in pairs)
    assert set(table.loc[table["rank"] == 1, "band"]) == {"hard"}


def test_difficulty_bands_views_of_a_shape_are_never_neighbours(tmp_path, mesh_ds):
    path = tmp_path / "views.parquet"
    shape_of = _synthetic_views(path, n_shapes=5)
    for identity in ("none", "group", "label"):
        table, _ = _bands(tmp_path, path, mesh_ds, identity=identity)
        assert len(table)
        assert all(shape_of[a] != shape_of[n] for a, n in zip(table["anchor_id"], table["neighbour_id"]))
    # identity none: the only exclusion is the shape, so every anchor finds k = 3 neighbours (12 other views)
    table, _ = _bands(tmp_path, path, mesh_ds, identity="none")
    assert (table.groupby("anchor_id").size() == 3).all() and table["anchor_id"].nunique() == 15


def test_difficulty_bands_bad_input(tmp_path, mesh_ds, capfd):
    path = tmp_path / "views.parquet"
    _synthetic_views(path, n_shapes=6)  # ds/extra/x is in neither the manifest nor ttv
    params = {"seed": 0, "space": "shape/ds/nepa", "difficulty": DIFFICULTY, "stage_version": 1}
    inputs = {"embeddings": str(path), "manifest": mesh_ds["manifest"], "ttv": mesh_ds["ttv"]}
    # labels come from the manifest for rows without a label column: an unknown shape is named
    assert _run(difficulty_bands, params, inputs, "--out", tmp_path / "x.parquet") == 1
    assert "ds/extra/x" in _errors(capfd)


def test_embed_image_depth_views_of_a_point_cloud_cache(tmp_path, no_network):
    """Point-cloud caches have no mesh arrays: their depth views come from the point-cloud ray answers."""
    from tokens_fixtures import write_pointcloud_shard

    shard = tmp_path / "shard-0000.h5"
    ids = write_pointcloud_shard(shard)
    pd.DataFrame({"shape_id": ids}).to_parquet(tmp_path / "index.parquet")
    pd.DataFrame(
        {"shape_id": ids, "dataset": "scan", "kind": "pointcloud", "label": 0, "label_name": "c", "meta": "{}"}
    ).to_parquet(tmp_path / "manifest.parquet")
    params = {
        "seed": 0,
        "dataset": "scan",
        "kind": "depth_views",
        "image": IMAGE_CFG | {"views": 4},
        "cache": {"shards": 1},
        "stage_version": 1,
    }
    inputs = {
        "manifest": str(tmp_path / "manifest.parquet"),
        "index": str(tmp_path / "index.parquet"),
        "shards": [str(shard)],
    }
    assert _run(embed_image, params, inputs, "--out", tmp_path / "v.parquet") == 0
    emb = read_vectors(tmp_path / "v.parquet")
    assert emb.ids == [f"{sid}#view{v}" for sid in ids for v in range(4)]
    # asking for more views than the cache has is a clear error
    params["image"] = IMAGE_CFG | {"views": PROFILE.n_views + 1}
    assert _run(embed_image, params, inputs, "--out", tmp_path / "w.parquet") == 1


def test_difficulty_groups_from_duplicates_when_ttv_has_none(tmp_path, mesh_ds, capfd):
    """The split table may lack groups; the fingerprints' duplicates table (shape_id, group) then supplies them."""
    path = tmp_path / "views.parquet"
    shape_of = _synthetic_views(path, n_shapes=5)
    ttv = pd.read_parquet(mesh_ds["ttv"])
    ttv.drop(columns="group").to_parquet(tmp_path / "ttv.parquet")
    ttv[["shape_id", "group"]].to_parquet(tmp_path / "duplicates.parquet")
    params = {"seed": 0, "space": "image/ds/vit", "difficulty": DIFFICULTY | {"identity": "group"}, "stage_version": 1}
    inputs = {"embeddings": str(path), "manifest": mesh_ds["manifest"], "ttv": str(tmp_path / "ttv.parquet")}
    assert _run(difficulty_bands, params, inputs, "--out", tmp_path / "a.parquet") == 1
    assert "no 'group' column" in _errors(capfd)
    inputs["duplicates"] = str(tmp_path / "duplicates.parquet")
    assert _run(difficulty_bands, params, inputs, "--out", tmp_path / "b.parquet") == 0
    table = pd.read_parquet(tmp_path / "b.parquet")
    group = dict(zip(ttv["shape_id"], ttv["group"]))
    assert len(table) and all(
        group[shape_of[a]] != group[shape_of[n]] for a, n in zip(table["anchor_id"], table["neighbour_id"])
    )


# ---- device policy: every input reaches the model's device (tests/unit/test_device_policy.py) ------------------------

REACHED_HOST = "Cannot copy out of meta tensor"


def test_embed_stages_send_every_input_to_the_models_device(
    tmp_path, image_ds, mesh_ds, clip_dir, monkeypatch, no_network
):
    monkeypatch.setenv("PIPELINE3D_DEVICE", "meta")
    log = logging.getLogger("test")
    image = {"seed": 0, "dataset": "img", "kind": "image", "image": IMAGE_CFG, "stage_version": 1}
    with pytest.raises(NotImplementedError, match=REACHED_HOST):
        jobs_embed_image.run(image, image_ds, str(tmp_path / "i.parquet"), log)
    with pytest.raises(NotImplementedError, match=REACHED_HOST):
        jobs_embed_text.run(
            _text_params(clip_dir, "img"),
            {"manifest": image_ds["manifest"]},
            str(tmp_path / "t.parquet"),
            str(tmp_path / "cache"),
            log,
        )
    with pytest.raises(NotImplementedError, match=REACHED_HOST):
        jobs_embed_shape.run(_shape_params(), mesh_ds, str(tmp_path / "s.parquet"), log)
    assert not list(tmp_path.glob("*.parquet"))  # nothing written by a job that failed
