"""Files of a trained text-3D alignment (``pipeline3d.objectives.text3d_alignment``), and rebuilding it from them.

* ``projection.safetensors``: the projection MLP's state dict.
* ``text_tower.safetensors``: ONLY the unfrozen text weights, under the open_clip model's own state-dict keys; the
  frozen rest is rebuilt from the base weights, whose sha256 the JSON records and the loader checks.
* ``head.json``: architecture, trainable blocks, text model + base weights sha256, temperature and both files'
  sha256, written last (a JSON on disk always describes finished weights).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import write_json
from ..io.weights import load_verified, read_sidecar, write_weights
from ..models.heads import ProjectionHead
from ..models.text_tower import PartiallyFrozenTextTower, load_trainable_state
from ..objectives.text3d_alignment import TextShapeAlignment
from .backbones import TextBackbone, build_text_backbone

log = logging.getLogger(__name__)

FORMAT = "pipeline3d-text3d-alignment"
FORMAT_VERSION = 1


def save_alignment(
    model: TextShapeAlignment,
    backbone: TextBackbone,
    projection_path: str | Path,
    text_tower_path: str | Path,
    head_json_path: str | Path,
    *,
    projection_config: Mapping[str, Any],
    text_config: Mapping[str, Any],
    seed: int,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Write the three files (JSON last) and return the JSON. ``text_config`` is the embed.text section (model,
    weights, random_init); ``seed`` is the one the base text tower was built with (random init depends on it)."""
    projection_path, text_tower_path = Path(projection_path), Path(text_tower_path)
    tower = model.text_tower
    projection_sha = write_weights(
        projection_path, model.projection.state_dict(), {"format": FORMAT, "part": "projection"}
    )
    text_sha = write_weights(text_tower_path, tower.trainable_state(), {"format": FORMAT, "part": "text"})
    head = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "projection": {"config": dict(projection_config), "file": projection_path.name, "sha256": projection_sha},
        "text": {
            "model": text_config["model"],
            "weights_file": Path(backbone.weights.path).name if backbone.weights.path else "",
            "base_weights_sha256": backbone.weights.sha256,
            "weights_source": backbone.weights.source,
            "seed": int(seed),
            "layout_prefix": tower.layout.prefix,
            "n_blocks": tower.layout.n_blocks,
            "trainable_blocks": tower.trainable_blocks,
            "trainable_keys": tower.trainable_keys(),
            "dim": backbone.dim,
            "context_length": backbone.context_length,
            "file": text_tower_path.name,
            "sha256": text_sha,
        },
        "trainable_blocks": tower.trainable_blocks,
        "temperature": model.loss.temperature,
        **dict(extra),
    }
    write_json(head_json_path, head)
    return head


@dataclass
class LoadedAlignment:
    """A saved alignment rebuilt: the text backbone (with the trained weights in place) and the projection."""

    backbone: TextBackbone
    tower: PartiallyFrozenTextTower
    projection: ProjectionHead
    head: dict[str, Any]


def load_alignment(
    head_json: str | Path,
    projection_path: str | Path,
    text_tower_path: str | Path,
    text_config: Mapping[str, Any],
    *,
    device: str | torch.device = "cpu",
) -> LoadedAlignment:
    """Rebuild a saved alignment: the base text tower from ``text_config`` (embed.text: model, weights,
    random_init) + the saved unfrozen weights, and the projection MLP. Mismatching files, a different text model
    or different base weights are errors naming the file. Built on the CPU, then moved to ``device``."""
    head_json, projection_path, text_tower_path = Path(head_json), Path(projection_path), Path(text_tower_path)
    head = read_sidecar(head_json, fmt=FORMAT, version=FORMAT_VERSION, what="text-3D alignment")
    text = head["text"]
    projection_state = load_verified(projection_path, head["projection"]["sha256"], head_json)
    tensors = load_verified(text_tower_path, text["sha256"], head_json)
    if text_config["model"] != text["model"]:
        raise ValueError(
            f"{head_json}: trained on text model {text['model']!r}, but the config names {text_config['model']!r}"
        )
    backbone = build_text_backbone(
        text_config["model"],
        text_config.get("weights"),
        allow_random_init=bool(text_config.get("random_init", False)),
        seed=int(text["seed"]),
    )
    if backbone.weights.sha256 != text["base_weights_sha256"]:
        raise ValueError(
            f"{head_json}: the base text weights have sha256 {backbone.weights.sha256[:16]}..., "
            f"not the {text['base_weights_sha256'][:16]}... it was trained from"
        )
    if sorted(tensors) != sorted(text["trainable_keys"]):
        raise ValueError(
            f"{text_tower_path}: holds {len(tensors)} tensors, head.json lists "
            f"{len(text['trainable_keys'])} trainable keys"
        )
    load_trainable_state(backbone.model, tensors, source=str(text_tower_path))
    tower = PartiallyFrozenTextTower(backbone.model, int(text["trainable_blocks"]))
    projection = ProjectionHead(**head["projection"]["config"])
    try:
        projection.load_state_dict(projection_state)
    except RuntimeError as exc:
        raise ValueError(f"{projection_path}: does not fit the projection in {head_json}: {exc}") from exc
    projection.eval().to(device)
    backbone.model.to(device)
    # requires_grad stays as in training: torch's attention picks its kernel by it (even under no_grad), and the
    # rebuilt model must give the very features it was validated with.
    tower.train(False)
    log.info(
        "loaded alignment %s: text %s (%d of %d blocks trained), projection %s",
        head_json,
        text["model"],
        text["trainable_blocks"],
        text["n_blocks"],
        head["projection"]["config"],
    )
    return LoadedAlignment(backbone=backbone, tower=tower, projection=projection, head=head)
