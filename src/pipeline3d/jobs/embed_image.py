"""The embed_image job: images of a dataset -> L2-normalised vectors with a frozen timm backbone.

``kind: image``: every ingested image item (id = shape id). ``kind: depth_views``: ``image.views`` evenly spaced
depth views of every cached shape, rendered from the cache's ray answers (id = ``<shape id>#view<v>``, with
``shape_id`` and ``view`` columns). The parquet metadata records the model, weights sha256, preprocessing, dataset,
kind and the camera views used.
"""

from __future__ import annotations

import json

from ..device import job_device
from ..embed.backbones import configured_image_backbone
from ..embed.images import embed_arrays, embed_images
from ..embed.sources import depth_view_items, image_items
from ..embed.vectors import write_vectors

KINDS = ("image", "depth_views")


def run(params: dict, files: dict, out: str, log) -> int:
    kind, img = params["kind"], params["image"]
    if kind not in KINDS:
        raise ValueError(f"embed_image: kind must be one of {KINDS}, got {kind!r}")
    if kind == "image":
        rows, views = image_items(files["manifest"], files["store"]), None
        id_column = "shape_id"
    else:
        rows, views = depth_view_items(files["manifest"], files["index"], files["shards"], int(img["views"]))
        id_column = "id"
    if not rows.ids:
        raise ValueError(f"{params['dataset']}: nothing to embed ({kind})")
    log.info("%s: %d images to embed (%s)", params["dataset"], len(rows.ids), kind)
    backbone = configured_image_backbone(img, seed=int(params["seed"]))
    backbone.model.to(job_device())
    embed = embed_images if kind == "image" else embed_arrays
    vectors = embed(backbone, rows.images, batch_size=int(img["batch_size"]), keys=rows.ids)
    metadata = {k: v for k, v in backbone.describe().items() if k != "dim"}  # write_vectors sets 'dim' itself
    metadata |= {"dataset": params["dataset"], "kind": kind, "views": json.dumps(views)}
    write_vectors(out, rows.ids, vectors, metadata, id_column=id_column, columns=rows.columns)
    log.info("wrote %d x %d vectors to %s", *vectors.shape, out)
    return 0
