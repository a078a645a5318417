"""Image items (PNG / JPEG bytes from an image tar): decode check with a decompression-bomb cap.

The size is read from the header first and the image is refused (``too_large``) before any pixel is decoded
when it has more than ``max_pixels``; then it is fully decoded once (``bad_image`` if that fails, including
truncated files). Other formats give ``unsupported_format``. The bytes themselves are stored unchanged.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from .rejects import ItemError

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG"})
# 8192 x 8192: far above any rendered view, far below what would exhaust memory when decoded
MAX_IMAGE_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    mode: str


def inspect_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageInfo:
    """Decode ``data`` once to prove it is a whole PNG/JPEG of at most ``max_pixels`` pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if im.format not in ACCEPTED_FORMATS:
                    raise ItemError("unsupported_format", f"image format {im.format}, expected PNG or JPEG")
                if width <= 0 or height <= 0:
                    raise ItemError("bad_image", f"image size {width}x{height}")
                if width * height > max_pixels:
                    raise ItemError("too_large", f"{width}x{height} pixels, more than the cap of {max_pixels}")
                im.load()
                return ImageInfo(width, height, im.format, im.mode)
    except ItemError:
        raise
    except Image.DecompressionBombError as exc:
        raise ItemError("too_large", str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ItemError("bad_image", f"cannot decode: {type(exc).__name__}: {exc}") from None
