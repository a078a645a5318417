"""A published metric head: build it from its description, embed vectors with it, save and load it.

The head is a ``ProjectionHead`` over frozen embeddings, trained by ``pipeline3d.jobs.metric_head``. Its files: the
weights (safetensors) and a JSON (written last) with the architecture, the sha256 of the weights and the source
embeddings' model and weights (``check_source`` refuses vectors of another backbone).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..io.atomic import write_json
from ..io.weights import load_verified, read_sidecar, write_weights
from ..models.heads import ProjectionHead
from ..rng import stable_hash

STAGE = "train_metric_head"  # the initial weights are keyed by it (kept from when this lived in the job module)
FORMAT = "pipeline3d-metric-head"
FORMAT_VERSION = 1


def build_head(config: Mapping[str, Any], *, seed: int | None = None, key: str = "") -> nn.Module:
    """A ProjectionHead; with ``seed`` its initial weights are a function of (seed, key) only."""
    kwargs = {k: config[k] for k in ("hidden", "layers", "dropout", "normalize")}
    kwargs["standardize"] = bool(config.get("standardize", False))  # heads exported before the option: off
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(stable_hash(f"{seed}|{STAGE}|init|{key}") % 2**63)
        head = ProjectionHead(int(config["in_dim"]), int(config["out_dim"]), **kwargs)
    head.in_dim, head.out_dim = int(config["in_dim"]), int(config["out_dim"])  # project() checks against them
    return head


@torch.no_grad()
def project(vectors: np.ndarray, head: nn.Module, *, batch_size: int = 4096) -> np.ndarray:
    """Embed (N, in_dim) vectors with a head (eval mode) -> (N, out_dim) float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    in_dim = getattr(head, "in_dim", None)
    if vectors.ndim != 2 or (in_dim is not None and vectors.shape[1] != in_dim):
        raise ValueError(f"project: expected (N, {in_dim}) vectors, got shape {vectors.shape}")
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    try:
        chunks = [
            head(torch.tensor(vectors[i : i + batch_size], device=device)).float().cpu().numpy()
            for i in range(0, len(vectors), batch_size)
        ]
    finally:
        head.train(was_training)
    out_dim = chunks[0].shape[1] if chunks else int(getattr(head, "out_dim", 0))
    return np.concatenate(chunks) if chunks else np.zeros((0, out_dim), dtype=np.float32)


def save_metric_head(
    head: nn.Module, safetensors_path: str | Path, json_path: str | Path, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """Write the head's weights (safetensors) and its JSON description (written last); returns the JSON.

    ``extra`` must hold ``config`` (``head_config``: in_dim, out_dim, hidden, layers, dropout, normalize) and
    ``source`` (the embeddings' metadata: model, weights_sha256, preprocessing ...); anything else is kept as is.
    """
    extra = dict(extra)
    config, source = dict(extra.pop("config")), dict(extra.pop("source"))
    for key in ("model", "weights_sha256"):
        if key not in source:
            raise ValueError(f"metric head export: source metadata lacks {key!r}")
    safetensors_path = Path(safetensors_path)
    sha256 = write_weights(
        safetensors_path, head.state_dict(), {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config}
    )
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **config,
        "source": source,
        "weights": safetensors_path.name,
        "sha256": sha256,
        "n_params": int(sum(p.numel() for p in head.parameters())),
        "extra": extra,
    }
    write_json(json_path, sidecar)
    return sidecar


def read_head_json(json_path: str | Path) -> dict[str, Any]:
    return read_sidecar(json_path, fmt=FORMAT, version=FORMAT_VERSION, what="metric head")


def load_metric_head(safetensors_path: str | Path, json_path: str | Path) -> nn.Module:
    """Rebuild a published head (eval mode); refuses weights that do not belong to the JSON."""
    sidecar = read_head_json(json_path)
    tensors = load_verified(safetensors_path, sidecar.get("sha256"), json_path)
    head = build_head(sidecar)
    try:
        head.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{safetensors_path}: weights do not fit the head described by {json_path} "
            f"(in_dim {sidecar['in_dim']}, out_dim {sidecar['out_dim']}, hidden {sidecar['hidden']}): "
            f"{exc}"
        ) from exc
    return head.eval()


def check_source(sidecar: Mapping[str, Any], metadata: Mapping[str, Any], what: str = "embeddings") -> None:
    """Refuse vectors made by another backbone than the one the head was trained on."""
    source = sidecar.get("source", {})
    for key in ("model", "weights_sha256"):
        if str(metadata.get(key)) != str(source.get(key)):
            raise ValueError(f"{what}: {key} {metadata.get(key)!r} differs from the head's source {source.get(key)!r}")
