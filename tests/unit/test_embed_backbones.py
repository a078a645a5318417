"""timm image backbones from local files only: clear errors, no network, seeded random init, DINOv2 518 -> 224."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from pipeline3d.embed.backbones import (
    RANDOM_INIT,
    MissingWeightsError,
    WeightsLoadError,
    build_image_backbone,
    file_sha256,
)

# A DINOv2-class ViT at toy width/depth: same architecture family, position embeddings for 518 px (37 x 37 grid).
DINO = "vit_small_patch14_dinov2"
TINY = dict(depth=1, embed_dim=48, num_heads=2)


@pytest.fixture(scope="module")
def dino_518_file(tmp_path_factory):
    """Weights of a toy DINOv2 ViT trained (here: initialised) at 518 px, saved as safetensors."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(DINO, pretrained=False, num_classes=0, **TINY)
    assert model.pos_embed.shape[1] == 1 + 37 * 37
    path = tmp_path_factory.mktemp("dino") / "dino_tiny_518.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def test_missing_file_names_config_key_and_path(tmp_path, no_network):
    missing = tmp_path / "nope" / "weights.safetensors"
    with pytest.raises(MissingWeightsError) as err:
        build_image_backbone(DINO, missing, config_key="embed.image.weights", **TINY)
    assert "embed.image.weights" in str(err.value) and str(missing) in str(err.value)
    # A configured path that is missing stays an error even when random init is allowed (typo != smoke test).
    with pytest.raises(MissingWeightsError):
        build_image_backbone(DINO, missing, allow_random_init=True, **TINY)


def test_no_weights_without_explicit_random_init_is_an_error(no_network):
    with pytest.raises(MissingWeightsError, match="embed.image.weights"):
        build_image_backbone(DINO, None, **TINY)


def test_hub_model_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="hub"):
        build_image_backbone("hf-hub:timm/vit_small_patch14_dinov2.lvd142m", tmp_path / "w.safetensors")


def test_random_init_warns_and_is_seeded(caplog, no_network):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="pipeline3d.embed.backbones"):
        a = build_image_backbone(DINO, None, allow_random_init=True, seed=1, **TINY)
    assert any(r.levelno == logging.WARNING and "RANDOM" in r.getMessage() for r in caplog.records)
    assert torch.equal(torch.random.get_rng_state(), before), "random init must not consume the caller's RNG"
    b = build_image_backbone(DINO, None, allow_random_init=True, seed=1, **TINY)
    c = build_image_backbone(DINO, None, allow_random_init=True, seed=2, **TINY)
    assert a.weights.source == RANDOM_INIT and a.weights.path == ""
    assert a.weights.sha256 == b.weights.sha256 != c.weights.sha256
    assert torch.equal(a.model.pos_embed, b.model.pos_embed)


def test_weights_come_from_the_file_and_are_recorded(dino_518_file, no_network):
    path, source = dino_518_file
    backbone = build_image_backbone(DINO, path, **TINY)
    assert backbone.weights.source == "file" and backbone.weights.sha256 == file_sha256(path)
    assert backbone.dim == 48
    x = torch.randn(2, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(backbone.model(x), source.eval()(x), atol=1e-5)
    meta = backbone.describe()
    assert meta["model"] == DINO and meta["weights_sha256"] == backbone.weights.sha256 and meta["dim"] == "48"
    assert meta["modality"] == "image" and meta["weights_file"] == path.name


def test_a_file_for_another_architecture_is_a_clear_error(dino_518_file, no_network):
    path, _ = dino_518_file
    with pytest.raises(WeightsLoadError) as err:
        build_image_backbone(DINO, path, config_key="embed.image.weights", depth=1, embed_dim=64, num_heads=2)
    assert "embed.image.weights" in str(err.value) and str(path) in str(err.value)


def test_dinov2_position_embeddings_adapt_from_518_to_224(dino_518_file, no_network):
    from timm.layers import resample_abs_pos_embed

    path, source = dino_518_file
    backbone = build_image_backbone(DINO, path, img_size=224, **TINY)
    assert backbone.model.pos_embed.shape == (1, 1 + 16 * 16, 48)
    # The file's 37 x 37 grid, resampled, not a fresh init.
    expected = resample_abs_pos_embed(
        source.pos_embed.detach(), new_size=(16, 16), old_size=(37, 37), num_prefix_tokens=1
    )
    assert torch.allclose(backbone.model.pos_embed, expected, atol=1e-6)
    assert torch.equal(backbone.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    # Preprocessing follows the model (224), not the checkpoint's 518; DINOv2's crop and ImageNet mean/std stay.
    pre = backbone.preprocessing
    assert pre["input_size"] == [3, 224, 224] and pre["crop_pct"] == 1.0
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["std"] == pytest.approx([0.229, 0.224, 0.225])
    from PIL import Image

    assert tuple(backbone.transform(Image.new("RGB", (300, 260))).shape) == (3, 224, 224)
