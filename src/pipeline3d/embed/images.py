"""Images -> L2-normalised float32 vectors with a timm backbone.

Inputs are PNG/JPEG bytes (``ItemStore.image_bytes``: ingested image tars) or uint8 pixel arrays (depth views
rendered from the cache).

Decoding is explicit so every input mode gives the same 3-channel picture: grey is replicated, palette images are
expanded, alpha is composited on black (the background of rendered depth views), and 16-bit grey (depth PNGs) is
scaled to 8 bits. The backbone's eval transform (resize, centre crop, mean/std) then runs as timm defines it.
Every batch has exactly ``batch_size`` rows (the last one padded with blank images that are dropped after), so an
image's vector depends on the image and the batch size only, not on which images share its batch: adding items to
a data set leaves the other items' vectors bit for bit unchanged (on the same CPU build).
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..device import model_device, to_host
from ..log import Progress
from .backbones import ImageBackbone

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

_SIXTEEN_BIT_GREY = {"I;16", "I;16B", "I;16L", "I;16N"}


def decode_rgb(data: bytes, key: str = "<bytes>") -> Image.Image:
    """Decode PNG/JPEG ``data`` into an 8-bit RGB PIL image; ValueError naming ``key`` if it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            if mode in _SIXTEEN_BIT_GREY:
                grey = np.asarray(im, dtype=np.uint32)
                # 65535 -> 255 exactly; rounding, not truncation, so 16-bit copies of 8-bit images come back equal
                return Image.fromarray(((grey + 128) // 257).astype(np.uint8)).convert("RGB")
            if mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode in ("RGBA", "LA", "PA"):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            if im.mode in ("I", "F"):
                raise ValueError(f"{im.mode!r} images (32-bit) have no defined 8-bit rendering")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValueError(f"image {key}: cannot decode: {type(exc).__name__}: {exc}") from None


def array_to_rgb(image: np.ndarray, key: str = "<array>") -> Image.Image:
    """An 8-bit grey (H, W) or RGB (H, W, 3) array (e.g. a depth view rendered from the cache) as an RGB image.

    Only uint8 is accepted: how depth maps to brightness (near = bright, background 0 ...) is the renderer's choice.
    """
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image {key}: expected a uint8 (H, W) or (H, W, 3) array, got {image.dtype} {image.shape}")
    return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")


def embed_images(
    backbone: ImageBackbone, images: Sequence[bytes], *, batch_size: int = 32, keys: Sequence[str] | None = None
) -> np.ndarray:
    """Float32 (N, D) L2-normalised vectors of the encoded (PNG/JPEG) ``images``, in input order.

    ``keys`` (e.g. shape ids) only name the item in a decode error.
    """
    return _embed(backbone, images, decode_rgb, batch_size, keys)


def embed_arrays(
    backbone: ImageBackbone, images: Sequence[np.ndarray], *, batch_size: int = 32, keys: Sequence[str] | None = None
) -> np.ndarray:
    """Like ``embed_images`` for uint8 pixel arrays (see ``array_to_rgb``)."""
    return _embed(backbone, images, array_to_rgb, batch_size, keys)


def _embed(
    backbone: ImageBackbone, images: Sequence, to_rgb: Callable, batch_size: int, keys: Sequence[str] | None
) -> np.ndarray:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if keys is not None and len(keys) != len(images):
        raise ValueError(f"{len(keys)} keys for {len(images)} images")
    n = len(images)
    out = np.empty((n, backbone.dim), dtype=np.float32)
    progress = Progress(log, n, f"embedded images ({backbone.name})", every=max(batch_size, 1000))
    device = model_device(backbone.model)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            pixels = torch.stack(
                [
                    backbone.transform(to_rgb(images[i], keys[i] if keys is not None else f"#{i}"))
                    for i in range(start, stop)
                ]
            )
            if stop - start < batch_size:
                pad = torch.zeros((batch_size - (stop - start), *pixels.shape[1:]), dtype=pixels.dtype)
                pixels = torch.cat([pixels, pad])
            features = backbone.model(pixels.to(device))[: stop - start]
            if features.ndim != 2 or features.shape[1] != backbone.dim:
                raise RuntimeError(
                    f"{backbone.name} returned features of shape {tuple(features.shape)}, "
                    f"expected (batch, {backbone.dim}); was it built with num_classes=0?"
                )
            out[start:stop] = to_host(F.normalize(features.float(), dim=-1))
            progress.step(stop - start)
    if not np.isfinite(out).all():
        raise FloatingPointError(f"{backbone.name} produced non-finite image embeddings")
    return out
