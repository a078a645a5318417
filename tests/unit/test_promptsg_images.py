"""PromptSG on an image dataset (tiny random-init ViT over PNG items, tiny random CLIP): the timm backbone's patch
tokens feed the same model; resume is byte-identical, the published model embeds as the trained one, and its
backbone file is a weight file the embedding stage can load."""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline3d
from image_fixtures import write_image_dataset
from pipeline3d.embed.backbones import build_image_backbone
from pipeline3d.embed.image_tokens import ImageItems, collate
from pipeline3d.embed.promptsg import IMAGE_WEIGHTS
from pipeline3d.embed.sources import image_items
from pipeline3d.jobs import embed_image, promptsg
from pipeline3d.stages import train_promptsg
from test_promptsg import _params as shape_params
from test_retrieval_head import clip_dir  # noqa: F401 (fixture)
from train_hooks import SignalAt

IMAGE = {
    "model": "vit_tiny_patch16_224",
    "weights": None,
    "random_init": True,
    "img_size": 32,
    "model_kwargs": {"depth": 1},
    "batch_size": 8,
}
CLASSES = ("chair", "lamp")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Ten pictures in two classes (bright vs dark, with noise), all in ttv train; two query/gallery splits."""
    root = tmp_path_factory.mktemp("promptsg_images")
    rng = np.random.default_rng(0)

    def item(k: int):
        label = k % 2
        pixels = np.clip(rng.normal(90 + 80 * label, 40, size=(40, 36, 3)), 0, 255).astype(np.uint8)
        return f"img/{CLASSES[label]}/v{k}", label, CLASSES[label], pixels, {}

    files = write_image_dataset(root, (item(k) for k in range(10)))
    manifest = pd.read_parquet(files["manifest"])
    ids = sorted(manifest["shape_id"])
    label_of = dict(zip(manifest["shape_id"], manifest["label"]))
    pd.DataFrame({"shape_id": ids, "label": [label_of[s] for s in ids], "split": "train", "group": ids}).to_parquet(
        root / "ttv.parquet"
    )
    qg = [
        {"split_id": s, "shape_id": sid, "label": label_of[sid], "role": "query" if (i + s) % 3 == 0 else "gallery"}
        for s in range(2)
        for i, sid in enumerate(ids)
    ]
    pd.DataFrame(qg).to_parquet(root / "qg.parquet")
    files |= {"ttv": str(root / "ttv.parquet"), "qg": str(root / "qg.parquet")}
    embed_params = {"seed": 3, "dataset": "img", "kind": "image", "image": IMAGE}
    embed_image.run(embed_params, files, str(root / "vit.parquet"), logging.getLogger("test"))
    return {**files, "image_embeddings": str(root / "vit.parquet")}


def _params(clip_dir, *, steps=6, **variant):
    params = shape_params(clip_dir, steps=steps, **variant)
    settings = {k: v for k, v in params["promptsg"].items() if k not in ("backend", "n_point", "n_ray", "template")}
    settings |= {"image_template": "a photo of a {} object", "image_augment": {"crop": "resized", "flip": True}}
    del params["tokens"]
    return {**params, "dataset": "img", "method": "vit-tiny", "kind": "image", "image": IMAGE, "promptsg": settings}


def _main(params, files, out):
    argv = ["--params", json.dumps(params), "--inputs", json.dumps(files), "--state-dir", str(out / "state")]
    argv += ["--model-dir", str(out / "model"), "--metrics", str(out / "metrics.json")]
    return train_promptsg.main(argv)


def _eval_batch(files, model):
    rows = image_items(files["manifest"], files["store"])
    return collate([ImageItems.from_rows(rows, model.backbone.transform).item(i) for i in range(len(rows.ids))])


def test_sigterm_then_resume_gives_the_uninterrupted_model_byte_for_byte(files, clip_dir, tmp_path, monkeypatch):
    params = _params(clip_dir, steps=6)
    assert _main(params, files, tmp_path / "reference") == 0
    real_train = promptsg.train
    with monkeypatch.context() as patch:
        patch.setattr(promptsg, "train", lambda *a, **kw: real_train(*a, **{**kw, "hooks": [SignalAt(every=2)]}))
        assert _main(params, files, tmp_path / "resumed") == 75
    assert not (tmp_path / "resumed" / "model" / "head.json").exists()
    assert _main(params, files, tmp_path / "resumed") == 0
    for name in ("head.safetensors", IMAGE_WEIGHTS):
        resumed, reference = (tmp_path / d / "model" / name for d in ("resumed", "reference"))
        assert resumed.read_bytes() == reference.read_bytes(), name
    metrics, reference = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("resumed", "reference"))
    assert metrics["head"] == reference["head"] and metrics["kind"] == "image"
    # the floors: the backbone's own pooled vectors before training; no descriptor (no cached surface points)
    assert metrics["raw"]["n_splits"] == 2 and "descriptor_raw" not in metrics


@pytest.mark.parametrize("variant", [{}, {"interaction": False, "textual_inversion": False}])
def test_the_published_model_embeds_as_the_trained_one(files, clip_dir, tmp_path, variant):
    out = tmp_path / "run"
    assert _main(_params(clip_dir, steps=3, **variant), files, out) == 0
    loaded = pipeline3d.load_promptsg(out / "model")  # the library face
    model, source, _ = promptsg.build(_params(clip_dir, **variant), files, 2, "img|full")
    state = torch.load(out / "state" / "last.ckpt", weights_only=True)["model"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    batch = _eval_batch(files, model)
    assert torch.equal(loaded.embed(batch), model.embed(batch))
    assert not torch.equal(model.embed(batch), promptsg.build(_params(clip_dir), files, 2, "img|full")[0].embed(batch))
    # the trained backbone is a local weight file the embedding stage loads like any other
    sidecar = json.loads((out / "model" / "head.json").read_text())
    assert sidecar["backbone"]["kind"] == "image" and sidecar["image"]["model"] == IMAGE["model"]
    reloaded = build_image_backbone(IMAGE["model"], out / "model" / IMAGE_WEIGHTS, img_size=32, depth=1)
    trained = model.backbone.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in reloaded.model.state_dict().items())
    assert set(reloaded.model.state_dict()) == set(trained)
