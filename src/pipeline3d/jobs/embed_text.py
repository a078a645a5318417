"""The embed_text job: captions and class prompts of a dataset -> L2-normalised vectors (open_clip text tower).

Image items with a caption (manifest meta ``caption``) give one row each (id = the item id, ``shape_id`` = the
object it shows); every class that has an item without a caption (all classes of mesh / point-cloud datasets)
gives one prompt per template (id = ``class:<label name>#t<i>``). Columns: text, kind (caption | prompt),
shape_id, label, label_name, template. Vectors are cached across jobs under --cache-dir.
"""

from __future__ import annotations

import json

from ..device import job_device
from ..embed.backbones import build_text_backbone
from ..embed.sources import text_items
from ..embed.text import TextEmbeddingCache, embed_texts
from ..embed.vectors import write_vectors


def run(params: dict, files: dict, out: str, cache_dir: str, log) -> int:
    cfg = params["text"]
    rows = text_items(files["manifest"], list(cfg["templates"]))
    if not rows.ids:
        raise ValueError(f"{files['manifest']}: no items, so no captions or class prompts to embed")
    backbone = build_text_backbone(
        cfg["model"],
        cfg.get("weights"),
        config_key="embed.text.weights",
        allow_random_init=bool(cfg.get("random_init")),
        seed=int(params["seed"]),
    )
    backbone.model.to(job_device())
    vectors = embed_texts(backbone, rows.texts, batch_size=int(cfg["batch_size"]), cache=TextEmbeddingCache(cache_dir))
    metadata = {k: v for k, v in backbone.describe().items() if k != "dim"}  # write_vectors sets 'dim' itself
    metadata |= {"dataset": params["dataset"], "templates": json.dumps(list(cfg["templates"]))}
    write_vectors(out, rows.ids, vectors, metadata, id_column="id", columns=rows.columns)
    log.info("wrote %d x %d vectors to %s", *vectors.shape, out)
    return 0
