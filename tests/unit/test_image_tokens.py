"""Token states of a trainable timm image backbone, and the per-item images that feed it (tiny random-init models)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from image_fixtures import png, write_image_dataset
from pipeline3d.embed.backbones import build_image_backbone
from pipeline3d.embed.image_tokens import ImageAugment, ImageItems, ImageTokenBackbone, collate
from pipeline3d.embed.images import decode_rgb, embed_images
from pipeline3d.embed.sources import image_items

VIT = {"name": "vit_tiny_patch16_224", "img_size": 32, "depth": 1}  # 2 x 2 patches + the class token
DINO_REG = {"name": "vit_small_patch14_reg4_dinov2", "img_size": 28, "depth": 1, "embed_dim": 48, "num_heads": 2}
# timm's own tiny test ResNet (BatchNorm, 160 px); residual branches not zero-initialised so every weight gets a
# gradient
CNN = {"name": "test_resnet", "zero_init_last": False}
SWIN = {
    "name": "swin_tiny_patch4_window7_224",
    "img_size": 32,
    "depths": (1, 1),
    "num_heads": (1, 2),
    "embed_dim": 16,
    "window_size": 4,
}  # channels-last features


def backbone(name: str, **kwargs):
    return build_image_backbone(name, None, allow_random_init=True, seed=0, **kwargs)


@pytest.fixture(scope="module")
def image_ds(tmp_path_factory):
    """Five PNG items in two classes, portrait and landscape, listed out of order in the manifest."""
    root = tmp_path_factory.mktemp("imgds")
    rng = np.random.default_rng(0)
    files = write_image_dataset(
        root,
        (
            (
                f"img/{'chair' if k < 3 else 'lamp'}/v{k}",
                int(k >= 3),
                "chair" if k < 3 else "lamp",
                rng.integers(0, 256, (40, 48, 3) if k % 2 else (48, 36, 3), dtype=np.uint8),
                {},
            )
            for k in (3, 0, 4, 1, 2)
        ),
    )
    return files["manifest"], files["store"]


@pytest.fixture(scope="module")
def vit():
    return backbone(**VIT)


# ---- tokens ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, tokens, dim, prefix",
    [
        (CNN, 5 * 5, 96, 0),  # (B, 96, 5, 5) at its own 160 px -> 25 tokens
        (VIT, 1 + 2 * 2, 192, 1),  # (B, 5, 192): class token + 2 x 2 patches
        (DINO_REG, 1 + 4 + 2 * 2, 48, 5),  # class token + 4 registers + 2 x 2 patches
        (SWIN, 4 * 4, 32, 0),  # (B, 4, 4, 32) channels-last
    ],
    ids=["resnet", "vit", "dinov2-reg", "swin"],
)
def test_token_shapes(spec, tokens, dim, prefix, no_network):
    net = ImageTokenBackbone(backbone(**spec))
    size = net.input_size
    assert size[1] == size[2] and net.dim == dim and net.num_prefix_tokens == prefix
    out, valid = net({"pixels": torch.randn(2, *size)})
    assert out.shape == (2, tokens, dim) and out.dtype == torch.float32
    assert valid.shape == (2, tokens) and valid.dtype == torch.bool and bool(valid.all())


def test_cnn_tokens_are_the_feature_map_row_major(no_network):
    net = ImageTokenBackbone(backbone(**CNN)).eval()
    x = torch.randn(1, *net.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fmap = net.model.forward_features(x)  # (1, C, H, W)
        tokens, _ = net({"pixels": x})
    assert torch.equal(tokens[0, 3 * fmap.shape[3] + 2], fmap[0, :, 3, 2])


def test_vit_tokens_pool_to_the_embedding_stage_vectors(vit, image_ds, no_network):
    """The same network the embedding stage pools: timm's head over these tokens gives its vectors."""
    net = ImageTokenBackbone(vit).eval()
    items = ImageItems.from_store(*image_ds, net.transform)
    with torch.no_grad():
        tokens, _ = net(collate([items[i] for i in range(len(items))]))
        pooled = F.normalize(net.model.forward_head(tokens), dim=-1).numpy()
    assert np.allclose(pooled, embed_images(vit, items.images, batch_size=2, keys=items.ids), atol=1e-5)


@pytest.mark.parametrize("name", ["cnn", "vit"])
def test_gradients_reach_every_backbone_parameter(name, vit, no_network):
    net = ImageTokenBackbone(backbone(**CNN) if name == "cnn" else vit)
    params = dict(net.model.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    assert net.training and net.model.training
    tokens, _ = net({"pixels": torch.randn(2, *net.input_size, generator=torch.Generator().manual_seed(1))})
    (tokens**2).mean().backward()
    missing = [n for n, p in params.items() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient for {missing[:5]}"
    net.model.zero_grad(set_to_none=True)


def test_batchnorm_follows_train_and_eval_mode(no_network):
    net = ImageTokenBackbone(backbone(**CNN))
    bn = net.model.bn1
    x = torch.randn(2, *net.input_size, generator=torch.Generator().manual_seed(2))
    before = bn.running_mean.clone()
    net.eval()
    assert not bn.training
    net({"pixels": x})
    assert torch.equal(bn.running_mean, before), "eval mode must not update BatchNorm statistics"
    net.train()
    assert bn.training
    net({"pixels": x})
    assert not torch.equal(bn.running_mean, before), "train mode updates BatchNorm statistics"


# ---- items -------------------------------------------------------------------------------------------------------


def test_eval_items_are_what_the_embedding_stage_feeds_its_backbone(vit, image_ds):
    rows = image_items(*image_ds)
    items = ImageItems.from_rows(rows, vit.transform)
    assert items.ids == sorted(items.ids) == rows.ids and items.labels.tolist() == [0, 0, 0, 1, 1]
    seen = []
    hook = vit.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        embed_images(vit, rows.images, batch_size=len(rows.ids), keys=rows.ids)
    finally:
        hook.remove()
    batch = collate([items[i] for i in range(len(items))])
    assert batch["pixels"].shape == (5, 3, 32, 32) and batch["pixels"].dtype == torch.float32
    assert torch.equal(batch["pixels"], seen[0])
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [0, 0, 0, 1, 1]
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]
    # eval: no augmentation, whatever the epoch and draw
    assert torch.equal(items.item(1, epoch=7, draw=3)["pixels"], items[1]["pixels"])


def test_train_augmentation_is_a_pure_function_of_seed_id_epoch_draw(vit, image_ds):
    rows = image_items(*image_ds)
    a = ImageItems.from_rows(rows, vit.transform, train=True, seed=5)
    # another instance, the items in another order and a subset: item ids, not positions, key the draws
    b = ImageItems.from_rows(rows, vit.transform, train=True, seed=5, ids=rows.ids[::-1][:3])
    assert b.ids == [rows.ids[4], rows.ids[3], rows.ids[2]]
    b.item(0, epoch=3)  # draws for other items / epochs do not disturb anything
    ref = a.item(2, epoch=1, draw=0)["pixels"]
    assert ref.shape == (3, 32, 32) and ref.dtype == torch.float32
    assert a.item(2, epoch=1, draw=0)["pixels"].numpy().tobytes() == ref.numpy().tobytes()
    assert b.item(2, epoch=1, draw=0)["pixels"].numpy().tobytes() == ref.numpy().tobytes()
    assert b.item(2, epoch=1)["label"] == a.item(2, epoch=1)["label"]
    different = {
        "epoch": a.item(2, epoch=2, draw=0)["pixels"],
        "draw": a.item(2, epoch=1, draw=1)["pixels"],
        "seed": ImageItems.from_rows(rows, vit.transform, train=True, seed=6).item(2, epoch=1)["pixels"],
        "eval": ImageItems.from_rows(rows, vit.transform).item(2)["pixels"],
    }
    for what, pixels in different.items():
        assert not torch.equal(pixels, ref), f"a different {what} gave the same pixels"
    # __getitem__ is epoch 0, draw 0
    assert torch.equal(a[2]["pixels"], a.item(2, 0, 0)["pixels"])


@pytest.mark.parametrize(
    "augment",
    [ImageAugment(), ImageAugment(crop="pad"), ImageAugment(crop="none"), ImageAugment(flip=False)],
    ids=["resized", "pad", "flip-only", "crop-only"],
)
def test_every_augmentation_keeps_the_square_input_size(vit, image_ds, augment):
    items = ImageItems.from_store(*image_ds, vit.transform, train=True, seed=0, augment=augment)
    for i in range(len(items)):  # portrait and landscape pictures
        pixels = [items.item(i, epoch=e)["pixels"] for e in range(16)]
        assert all(p.shape == (3, 32, 32) and bool(torch.isfinite(p).all()) for p in pixels)
        assert any(not torch.equal(p, pixels[0]) for p in pixels[1:]), f"{augment}: item {i} never changes"


def test_augmentation_draws_do_not_depend_on_the_settings():
    """flip-only and crop-only pick the same flips / crops as both together: the draws are always the same four."""
    picture = Image.fromarray(np.arange(20 * 24 * 3, dtype=np.uint8).reshape(20, 24, 3))
    for key in range(8):
        both = ImageAugment().apply(picture, np.random.default_rng(key))
        crop_only = ImageAugment(flip=False).apply(picture, np.random.default_rng(key))
        flip_only = ImageAugment(crop="none").apply(picture, np.random.default_rng(key))
        flipped = not np.array_equal(np.asarray(flip_only), np.asarray(picture))
        expected = crop_only.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else crop_only
        assert np.array_equal(np.asarray(both), np.asarray(expected))
        assert 0.8 * 24 - 1 <= crop_only.size[0] <= 24 and crop_only.size[0] / crop_only.size[1] == pytest.approx(
            1.2, abs=0.07
        )


def test_bad_arguments():
    with pytest.raises(ValueError, match="crop must be one of"):
        ImageAugment(crop="jitter")
    with pytest.raises(ValueError, match="more than once"):
        ImageItems(["a", "a"], [b"", b""], [0, 0], lambda im: im)
    with pytest.raises(ValueError, match="2 ids, 1 images"):
        ImageItems(["a", "b"], [b""], [0, 0], lambda im: im)


def test_unknown_ids_are_named(vit, image_ds):
    with pytest.raises(ValueError, match="img/chair/nope"):
        ImageItems.from_store(*image_ds, vit.transform, ids=["img/chair/v0", "img/chair/nope"])


def test_a_corrupt_image_names_the_item(vit):
    good = png(np.zeros((8, 8, 3), np.uint8))
    items = ImageItems(["ds/chair/ok", "ds/chair/broken"], [good, good[:30]], [0, 0], vit.transform, train=True)
    assert items.item(0)["pixels"].shape == (3, 32, 32)
    for make in (lambda: items.item(1, epoch=2), lambda: collate([items[0], items[1]])):
        with pytest.raises(ValueError, match="ds/chair/broken.*cannot decode"):
            make()
    # the eval path reads it the same way the embedding stage does
    with pytest.raises(ValueError, match="ds/chair/broken"):
        decode_rgb(good[:30], "ds/chair/broken")
