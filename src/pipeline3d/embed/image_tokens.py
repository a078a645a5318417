"""A trainable timm image backbone's token states, and the per-item images that feed it.

``ImageTokenBackbone`` wraps the timm model of an ``ImageBackbone`` (``build_image_backbone``: local weights or an
explicitly allowed random init) and returns the output of timm's ``forward_features`` as a token sequence:

* ViT-like models give (B, N, C) and every token is kept: the ``num_prefix_tokens`` class / register / distillation
  tokens come first, then the patch tokens in row-major grid order (timm's final norm already applied);
* CNNs give (B, C, H, W), flattened row-major to (B, H*W, C); models whose features are channels-last (timm's
  ``output_fmt == "NHWC"``, e.g. Swin) give (B, H, W, C), flattened the same way.

Every image has the backbone's own square input size, so every token is valid. The backbone is trained: its
parameters are switched back to ``requires_grad`` (``build_image_backbone`` freezes them), nothing runs under
``no_grad``, and BatchNorm layers follow the wrapper's train / eval mode.

``ImageItems`` is the per-item data of an ingested image dataset (manifest + item store, read by
``sources.image_items``). Eval items (``train=False``) are exactly what the embedding stage feeds its backbone:
``transform(decode_rgb(bytes, id))``. Train items get a light augmentation on the decoded picture before that same
transform, so the output keeps the backbone's square input size, interpolation and mean/std: a random crop of the
picture (``crop="resized"``: same aspect, area fraction in [min_scale, 1], resampled by the transform; or
``crop="pad"``: the picture padded with black by ``pad_frac`` of its sides, cropped back to its size) and a
horizontal flip with probability 1/2. The draws come from ``rng_for(seed, AUGMENT_STAGE, <id, epoch, draw>)`` only,
so an item's pixels are a pure function of (seed, item id, epoch, draw): independent of its index, of the batch, of
worker processes and of what was drawn before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..device import model_device
from ..rng import rng_for
from .backbones import ImageBackbone
from .images import decode_rgb
from .sources import ImageRows, image_items

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

PIXELS = "pixels"
LABEL = "label"
INDEX = "index"
AUGMENT_STAGE = "embed.image_tokens.augment"
CROPS = ("resized", "pad", "none")


# ---------------------------------------------------------------------------------------------------------------
# Backbone


class ImageTokenBackbone(nn.Module):
    """Token states (B, T, dim) float32 and their mask (B, T) bool of a TRAINABLE timm image backbone.

    ``backbone.model`` becomes this module's ``model`` (shared, not copied) and is made trainable in place
    (``trainable=False`` leaves its ``requires_grad`` flags as they are). The module starts in train mode.
    """

    def __init__(self, backbone: ImageBackbone, *, trainable: bool = True):
        super().__init__()
        model = backbone.model
        if not hasattr(model, "forward_features"):
            raise TypeError(
                f"image backbone {backbone.name}: {type(model).__name__} has no forward_features (not a timm model?)"
            )
        self.model = model
        self.name = backbone.name
        self.transform = backbone.transform  # PIL RGB -> (3, S, S), what ImageItems applies
        self.preprocessing = dict(backbone.preprocessing)
        self.weights = backbone.weights  # the weights it STARTED from
        # Width of forward_features (MobileNetV3's head_hidden_size, after its conv head, is not a token width).
        self.dim = int(model.num_features)
        fmt = getattr(model, "output_fmt", "NCHW")
        self.channels_last = str(getattr(fmt, "value", fmt)).upper() == "NHWC"
        # Leading non-patch tokens of a ViT-like model (class, registers, distillation); 0 for feature maps.
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.input_size = tuple(int(v) for v in backbone.preprocessing["input_size"])  # (3, S, S)
        if trainable:
            model.requires_grad_(True)
        self.train()

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch["pixels"]`` (B, 3, S, S) -> (tokens (B, T, dim) float32, valid (B, T) bool, all True)."""
        pixels = batch[PIXELS]
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"image backbone {self.name}: pixels must be (batch, 3, H, W), got {tuple(pixels.shape)}")
        features = self.model.forward_features(pixels.to(model_device(self.model)))
        if features.ndim == 3:  # (B, N, C): ViT-like, prefix tokens first
            tokens = features
        elif features.ndim == 4:
            tokens = features.flatten(1, 2) if self.channels_last else features.flatten(2).transpose(1, 2)
        else:
            raise RuntimeError(
                f"image backbone {self.name}: forward_features returned shape "
                f"{tuple(features.shape)}; expected (B, N, C) tokens or a (B, C, H, W) feature map"
            )
        if tokens.shape[-1] != self.dim:
            raise RuntimeError(
                f"image backbone {self.name}: forward_features gave {tokens.shape[-1]} channels "
                f"(shape {tuple(features.shape)}), expected num_features = {self.dim}"
            )
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return tokens.float(), valid


# ---------------------------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class ImageAugment:
    """The train-time augmentation (applied to the decoded picture, before the backbone's eval transform)."""

    flip: bool = True  # horizontal flip with probability 1/2
    crop: str = "resized"  # "resized" | "pad" | "none"
    min_scale: float = 0.64  # "resized": smallest crop area as a fraction of the picture (sides >= 0.8)
    pad_frac: float = 0.0625  # "pad": black border, as a fraction of each side, on every edge

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ValueError(f"image augmentation crop must be one of {CROPS}, got {self.crop!r}")
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"image augmentation min_scale must be in (0, 1], got {self.min_scale}")
        if not 0.0 <= self.pad_frac < 1.0:
            raise ValueError(f"image augmentation pad_frac must be in [0, 1), got {self.pad_frac}")

    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """``image`` cropped and flipped by the draws of ``rng``, which are the same whatever the settings are."""
        from PIL import Image as PILImage

        # Always the same four draws, in this order, so one setting never shifts another's randomness.
        scale, u, v, flip = rng.random(4)
        width, height = image.size
        if self.crop == "resized":
            side = float(np.sqrt(self.min_scale + (1.0 - self.min_scale) * scale))
            w, h = max(1, round(width * side)), max(1, round(height * side))
            x, y = int(u * (width - w + 1)), int(v * (height - h + 1))
            image = image.crop((x, y, x + w, y + h))
        elif self.crop == "pad":
            pw, ph = round(width * self.pad_frac), round(height * self.pad_frac)
            x, y = int(u * (2 * pw + 1)), int(v * (2 * ph + 1))  # offset into the padded picture
            canvas = PILImage.new("RGB", (width + 2 * pw, height + 2 * ph), (0, 0, 0))
            canvas.paste(image, (pw, ph))
            image = canvas.crop((x, y, x + width, y + height))
        if self.flip and flip < 0.5:
            image = image.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
        return image


class ImageItems(torch.utils.data.Dataset):
    """Pixels and labels of image items, for a training loop that asks for ``item(index, epoch, draw)``.

    ``images`` are the encoded (PNG/JPEG) bytes of the items ``ids`` (any indexable, e.g. ``ImageRows.images``);
    ``transform`` is the backbone's eval transform (``ImageBackbone.transform`` / ``ImageTokenBackbone.transform``).
    """

    def __init__(
        self,
        ids: Sequence[str],
        images: Sequence[bytes],
        labels: Sequence[int],
        transform: Callable,
        *,
        train: bool = False,
        seed: int = 0,
        augment: ImageAugment | None = None,
    ):
        if not len(ids) == len(images) == len(labels):
            raise ValueError(f"{len(ids)} ids, {len(images)} images and {len(labels)} labels")
        self.ids = [str(i) for i in ids]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("image items: some ids are listed more than once")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.train = bool(train)
        self.seed = int(seed)
        self.augment = augment if augment is not None else ImageAugment()

    @classmethod
    def from_rows(
        cls, rows: ImageRows, transform: Callable, *, ids: Sequence[str] | None = None, **kwargs: Any
    ) -> ImageItems:
        """Items of ``sources.image_items`` rows: all of them (shape-id order) or ``ids`` (in that order)."""
        labels = rows.columns["label"]
        if ids is None:
            return cls(rows.ids, rows.images, labels, transform, **kwargs)
        row_of = {sid: k for k, sid in enumerate(rows.ids)}
        unknown = [sid for sid in ids if sid not in row_of]
        if unknown:
            raise ValueError(
                f"image items: {len(unknown)} ids are not image items of the dataset (first: {unknown[:3]})"
            )
        picked = [row_of[sid] for sid in ids]
        return cls(
            [rows.ids[k] for k in picked],
            [rows.images[k] for k in picked],
            [labels[k] for k in picked],
            transform,
            **kwargs,
        )

    @classmethod
    def from_store(
        cls,
        manifest_path: str | Path,
        items_path: str | Path,
        transform: Callable,
        *,
        ids: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> ImageItems:
        """Items of an ingested image dataset, read as the embedding stage reads them (``image_items``).

        Every item's bytes are read (into memory) first; to make train and eval items of one dataset, read the rows
        once and use ``from_rows`` twice.
        """
        return cls.from_rows(image_items(manifest_path, items_path), transform, ids=ids, **kwargs)

    def __len__(self) -> int:
        return len(self.ids)

    def pixels(self, index: int, epoch: int = 0, draw: int = 0) -> torch.Tensor:
        """Float32 (3, S, S) pixels of item ``index`` (augmented by (seed, id, epoch, draw) when training)."""
        sid = self.ids[index]
        image = decode_rgb(self.images[index], sid)
        if self.train:
            image = self.augment.apply(image, self.rng(sid, epoch, draw))
        try:
            pixels = self.transform(image)
        except Exception as exc:  # name the item whatever the transform raised
            raise ValueError(f"image {sid}: preprocessing failed: {type(exc).__name__}: {exc}") from exc
        return pixels.to(torch.float32).contiguous()

    def rng(self, sid: str, epoch: int, draw: int) -> np.random.Generator:
        return rng_for(self.seed, AUGMENT_STAGE, f"{sid}\0{int(epoch)}\0{int(draw)}")

    def item(self, index: int, epoch: int = 0, draw: int = 0) -> dict[str, torch.Tensor]:
        """{"pixels": float32 (3, S, S), "label": int64 (), "index": int64 ()} of item ``index``."""
        index = int(index)
        return {
            PIXELS: self.pixels(index, epoch, draw),
            LABEL: torch.tensor(int(self.labels[index]), dtype=torch.int64),
            INDEX: torch.tensor(index, dtype=torch.int64),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item(index, 0, 0)


def collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Items stacked key by key: pixels (B, 3, S, S), label (B,), index (B,)."""
    if not samples:
        raise ValueError("collate: no samples")
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
