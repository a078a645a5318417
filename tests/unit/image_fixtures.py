"""Tiny ingested image datasets for the image tests: PNG items in an item store and their manifest."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline3d.io.itemstore import ItemStoreWriter


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_dataset(root: Path, items: Iterable[tuple[str, int, str, np.ndarray, dict]]) -> dict[str, str]:
    """``items``: (shape id, label, label name, uint8 pixels (H, W, 3), metadata), stored in that order as the
    ingest stage stores them. Returns {"manifest", "store"} (the paths the stages read)."""
    rows = []
    with ItemStoreWriter(root / "items.h5", "img", "image") as writer:
        for sid, label, name, pixels, meta in items:
            writer.add(sid, image_bytes=np.frombuffer(png(pixels), np.uint8))
            rows.append(
                {
                    "shape_id": sid,
                    "dataset": "img",
                    "kind": "image",
                    "label": int(label),
                    "label_name": name,
                    "meta": json.dumps(meta),
                }
            )
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return {"manifest": str(root / "manifest.parquet"), "store": str(root / "items.h5")}
