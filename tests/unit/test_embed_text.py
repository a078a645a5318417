"""open_clip text towers from local files, caption embeddings and their on-disk cache (tiny random CLIP models)."""

from __future__ import annotations

import json
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from pipeline3d.embed import text as text_mod
from pipeline3d.embed.backbones import RANDOM_INIT, MissingWeightsError, build_text_backbone
from pipeline3d.embed.text import TextEmbeddingCache, class_embeddings, embed_texts, prompt_texts
from pipeline3d.io.weights import file_sha256

# A CLIP small enough to build in a blink; real BPE tokenizer and vocabulary, 2 text blocks of width 32.
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CAPTIONS = [
    "a 3D model of a chair",
    "a depth image of a lamp",
    "a table",
    "a chair",
    "an old wooden boat",
    "a 3D model of a chair",
    "a red car",
    "a plane",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(config-only folder, folder with config + weights, the saved model's full state dict)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tinyclip")
    bare, full = root / "bare", root / "full"
    for folder in (bare, full):
        folder.mkdir()
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    source = build_text_backbone(f"local-dir:{bare}", allow_random_init=True, seed=7, keep_image_tower=True)
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    save_file(state, str(full / "open_clip_model.safetensors"))
    return bare, full, source


@pytest.fixture(scope="module")
def backbone(tiny):
    return build_text_backbone(f"local-dir:{tiny[1]}")


def _direct(bb, texts):
    with torch.inference_mode():
        return torch.nn.functional.normalize(bb.model.encode_text(bb.tokenizer(texts)), dim=-1).numpy()


# ---- building ---------------------------------------------------------------------------------------------------


def test_missing_weights_are_clear_errors(tmp_path, tiny, no_network):
    missing = tmp_path / "eva02.bin"
    with pytest.raises(MissingWeightsError) as err:
        build_text_backbone("EVA02-L-14-336", missing, config_key="embed.text.weights")
    assert "embed.text.weights" in str(err.value) and str(missing) in str(err.value)
    with pytest.raises(MissingWeightsError, match="embed.text.weights"):
        build_text_backbone("EVA02-L-14-336", None)
    with pytest.raises(MissingWeightsError, match="no weight file"):
        build_text_backbone(f"local-dir:{tiny[0]}")  # config but no weights, random init not allowed
    with pytest.raises(ValueError, match="hub"):
        build_text_backbone("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None, allow_random_init=True)


def test_random_init_is_explicit_seeded_and_warned(tiny, caplog, tmp_path, no_network):
    with caplog.at_level(logging.WARNING, logger="pipeline3d.embed.backbones"):
        a = build_text_backbone(f"local-dir:{tiny[0]}", allow_random_init=True, seed=7)
    assert any("RANDOM" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    b = build_text_backbone(f"local-dir:{tiny[0]}", allow_random_init=True, seed=8)
    assert a.weights.source == RANDOM_INIT and a.weights.sha256 != b.weights.sha256
    # same seed -> the same weights as the saved model (its text tower)
    assert np.array_equal(_direct(a, CAPTIONS[:3]), _direct(tiny[2], CAPTIONS[:3]))
    # the same config in another folder (another machine, another checkout) -> the same random weights
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "open_clip_config.json").write_bytes((tiny[0] / "open_clip_config.json").read_bytes())
    assert build_text_backbone(f"local-dir:{moved}", allow_random_init=True, seed=7).weights.sha256 == a.weights.sha256


def test_weights_load_from_local_dir_and_from_a_file(tiny, tmp_path, no_network):
    import open_clip

    _, full, source = tiny
    weights = full / "open_clip_model.safetensors"
    expected = _direct(source, CAPTIONS)

    from_dir = build_text_backbone(f"local-dir:{full}")
    assert from_dir.weights.source == "file" and from_dir.weights.sha256 == file_sha256(weights)
    assert from_dir.model.visual is None and from_dir.image_transform is None  # text tower only
    assert from_dir.dim == 16 and from_dir.context_length == 77
    assert np.allclose(_direct(from_dir, CAPTIONS), expected, atol=1e-6)

    # An architecture known by name + pretrained=<file> (the EVA02-L-14-336 route); register the toy config.
    (tmp_path / "p3d-test-tiny-clip.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(tmp_path / "p3d-test-tiny-clip.json")
    by_name = build_text_backbone("p3d-test-tiny-clip", weights, config_key="embed.text.weights")
    assert by_name.weights.sha256 == from_dir.weights.sha256 and by_name.weights.path == str(weights.resolve())
    assert np.allclose(_direct(by_name, CAPTIONS), expected, atol=1e-6)
    meta = by_name.describe()
    assert meta["modality"] == "text" and meta["weights_sha256"] == file_sha256(weights)
    assert json.loads(meta["preprocessing"])["context_length"] == 77


# ---- embedding + cache -------------------------------------------------------------------------------------------


def test_embed_texts_is_normalised_ordered_and_deduplicated(backbone):
    vectors = embed_texts(backbone, CAPTIONS, batch_size=4)
    assert vectors.dtype == np.float32 and vectors.shape == (len(CAPTIONS), 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(vectors[0], vectors[5])  # the same caption twice
    assert np.allclose(vectors, _direct(backbone, CAPTIONS), atol=1e-6)
    assert not np.allclose(vectors[2], vectors[3])


def test_cache_computes_each_caption_once_and_gives_the_same_bytes(backbone, tmp_path, monkeypatch):
    fresh = embed_texts(backbone, CAPTIONS, batch_size=4)  # no cache
    encoded: list[str] = []
    real_encode = text_mod._encode

    def counting(bb, texts, batch_size):
        encoded.extend(texts)
        return real_encode(bb, texts, batch_size)

    monkeypatch.setattr(text_mod, "_encode", counting)
    cache = TextEmbeddingCache(tmp_path / "cache")
    # Fill the cache in another order, so every caption first meets other batch companions than in `fresh`.
    embed_texts(backbone, CAPTIONS[::-1][:5], batch_size=4, cache=cache)
    embed_texts(backbone, CAPTIONS[::-1], batch_size=4, cache=cache)
    assert sorted(encoded) == sorted(set(CAPTIONS))  # each distinct caption encoded exactly once
    encoded.clear()
    cached = embed_texts(backbone, CAPTIONS, batch_size=4, cache=cache)
    assert encoded == []
    assert cached.tobytes() == fresh.tobytes()  # the cache's history does not show in the bytes

    # Another batch size (may round differently in the last bit): another key, nothing reused.
    embed_texts(backbone, CAPTIONS[:2], batch_size=8, cache=cache)
    assert encoded == CAPTIONS[:2]
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_cache_flushes_parts_as_it_goes_and_refuses_stray_parts(backbone, tmp_path):
    cache = TextEmbeddingCache(tmp_path / "cache")
    texts = [f"caption {i}" for i in range(7)]
    embed_texts(backbone, texts, batch_size=3, cache=cache, flush_seconds=0.0)
    namespace = f"{backbone.cache_namespace}|batch3"
    parts = sorted(cache.folder(namespace).glob("part-*.parquet"))
    assert len(parts) == 3  # one per batch: a killed job keeps what it finished
    assert set(cache.lookup(namespace, texts + ["unseen"])) == set(texts)

    other = TextEmbeddingCache(tmp_path / "other")
    other.store("someone-else|abc|ctx77|batch3", ["x"], np.ones((1, 16), np.float32))
    stray = next(other.folder("someone-else|abc|ctx77|batch3").glob("part-*.parquet"))
    stray.rename(parts[0].parent / "part-0-stray.parquet")
    with pytest.raises(ValueError, match="stray"):
        cache.lookup(namespace, ["caption 0"])


def test_class_embeddings_average_the_prompt_templates(backbone):
    templates = ["a 3D model of a {}", "a depth image of a {}", "a {} object"]
    assert prompt_texts("chair", templates) == ["a 3D model of a chair", "a depth image of a chair", "a chair object"]
    classes = class_embeddings(backbone, ["chair", "lamp"], templates, batch_size=4)
    prompts = embed_texts(backbone, prompt_texts("lamp", templates), batch_size=4)
    mean = prompts.astype(np.float64).mean(axis=0)
    assert classes.shape == (2, 16) and classes.dtype == np.float32
    assert np.allclose(classes[1], mean / np.linalg.norm(mean), atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        prompt_texts("chair", ["a {} and a {}"])
    with pytest.raises(ValueError, match="no prompt templates"):
        prompt_texts("chair", [])
