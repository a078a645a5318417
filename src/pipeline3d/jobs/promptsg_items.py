"""What a PromptSG job trains and evaluates on, per kind of dataset: the backbone and its items.

* shapes (mesh datasets): the pretrained 3D encoder (``promptsg.method``) over the cache's token draws
  (``ShapeTokenDataset``: training draws keyed by shape id, epoch and slot; one deterministic evaluation draw);
* images (image datasets): the timm image backbone of ``embed.image`` (the one whose pooled vectors are the image
  embeddings, i.e. the raw floor) over its patch tokens (``ImageTokenBackbone``), fed the ingested pictures
  (``ImageItems``: training pictures augmented by (seed, id, epoch, draw); evaluation pictures exactly as the
  embedding stage sees them).

Both give items with ``item(index, epoch, draw)`` and a ``collate``, so the job's P x K epochs, objective and
evaluation do not depend on the kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..data.selection import cached_rows, ttv_labels
from ..embed.backbones import configured_image_backbone
from ..embed.image_tokens import ImageAugment, ImageItems, ImageTokenBackbone
from ..embed.image_tokens import collate as collate_images
from ..embed.promptsg import ShapeTokenBackbone
from ..embed.sources import image_items
from ..tokens.collate import collate as collate_tokens
from ..tokens.dataset import ShapeTokenDataset
from .data import entries_of
from .finetune import job_encoder

KINDS = ("shape", "image")


@dataclass
class Items:
    """The training and evaluation items of one job (index i of ``train`` is ``train_ids[i]``)."""

    train: Any  # .item(index, epoch, draw) -> one sample
    train_ids: list[str]
    train_labels: list[int]
    test: Any  # .item(index) -> the evaluation sample
    test_ids: list[str]
    collate: Callable


def kind_of(params: Mapping[str, Any]) -> str:
    kind = str(params.get("kind", "shape"))
    if kind not in KINDS:
        raise ValueError(f"train_promptsg: kind must be one of {KINDS}, got {kind!r}")
    return kind


def backbone(params: Mapping[str, Any], files: Mapping[str, Any], s: Mapping[str, Any], key: str):
    """(backbone module, source description for the JSON): the pretrained encoder's token states for shapes, the
    trainable timm backbone of ``params["image"]`` for images."""
    seed = int(params["seed"])
    if kind_of(params) == "image":
        img = params["image"]
        image = configured_image_backbone(img, seed=seed)
        return ImageTokenBackbone(image), {"image": image_source(img, image)}
    enc_params = {**params, "finetune": {"n_point": s["n_point"], "n_ray": s["n_ray"]}}
    encoder, causal, tok = job_encoder(enc_params, files, seed=seed, key=key)
    return ShapeTokenBackbone(encoder, causal=causal), {"tokens": dict(tok)}


def image_source(img: Mapping[str, Any], image: Any) -> dict[str, Any]:
    """What rebuilds the image backbone's architecture and preprocessing (the JSON's ``image``)."""
    return {
        "model": img["model"],
        "img_size": img.get("img_size"),
        "model_kwargs": dict(img.get("model_kwargs") or {}),
        "started_from_sha256": image.weights.sha256,
        "preprocessing": image.preprocessing,
    }


def items(
    params: Mapping[str, Any],
    files: Mapping[str, Any],
    s: Mapping[str, Any],
    model_backbone: nn.Module,
    source: Mapping[str, Any],
    test_labels: Mapping[str, int],
) -> Items:
    """The ttv ``train`` items and the ``test_labels`` items (the qg shapes), in id order."""
    seed = int(params["seed"])
    train_labels = ttv_labels(files["ttv"], "train")
    if kind_of(params) == "image":
        rows = image_items(files["manifest"], files["store"])
        augment = ImageAugment(**dict(s.get("image_augment") or {}))
        train_ids, test_ids = sorted(train_labels), sorted(test_labels)
        transform = model_backbone.transform
        train = ImageItems.from_rows(rows, transform, ids=train_ids, train=True, seed=seed, augment=augment)
        test = ImageItems.from_rows(rows, transform, ids=test_ids, train=False, seed=seed)
        return Items(train, train_ids, [int(v) for v in train.labels], test, test_ids, collate_images)
    tok = source["tokens"]
    train_rows = cached_rows(train_labels, files["index"], files["shards"])
    test_rows = cached_rows(dict(test_labels), files["index"], files["shards"])
    train = ShapeTokenDataset(
        entries_of(train_rows), s["backend"], tok, seed=seed, mode="train", augment=s.get("augment")
    )
    test = ShapeTokenDataset(entries_of(test_rows), s["backend"], tok, seed=seed, mode="eval", mc_draws=1)
    return Items(
        train,
        [r.shape_id for r in train_rows],
        [r.label for r in train_rows],
        test,
        [r.shape_id for r in test_rows],
        collate_tokens,
    )
