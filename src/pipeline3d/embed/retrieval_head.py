"""A published retrieval head: the model, what its JSON records, saving and loading it.

The head (``RetrievalModel``) is trained by ``pipeline3d.jobs.retrieval_head``: Linear(in_dim -> neck_dim), a BNNeck
whose post-BN feature is the published embedding (cosine), ArcFace, and with textual inversion the pseudo-token MLP
and the shape -> text-width projection. Its files: ``head.safetensors`` (every trained tensor) and ``head.json``
(written last: dims, class names, ArcFace parameters, the input embeddings' provenance, the text tower's name and
weights sha256 when textual inversion is on, the weights' sha256). ``load_retrieval_head(safetensors, json)
.embed(vectors)`` embeds new shapes' vectors with the published head.
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
from ..models.heads import BNNeck, TextualInversion
from ..objectives.arcface import ArcFace
from .vectors import Embeddings

FORMAT = "pipeline3d-retrieval-head"
FORMAT_VERSION = 1


class RetrievalModel(nn.Module):
    """Everything that is trained: Linear + BNNeck (the published embedding), ArcFace, and with textual inversion
    the pseudo-token MLP and the shape -> text-width projection."""

    def __init__(
        self,
        in_dim: int,
        neck_dim: int,
        n_classes: int,
        *,
        margin: float,
        scale: float,
        token_dim: int | None = None,
        text_dim: int | None = None,
        n_tokens: int = 1,
    ) -> None:
        super().__init__()
        self.config = {
            "in_dim": int(in_dim),
            "neck_dim": int(neck_dim),
            "n_classes": int(n_classes),
            "margin": float(margin),
            "scale": float(scale),
            "token_dim": token_dim,
            "text_dim": text_dim,
            "n_tokens": int(n_tokens),
        }
        self.fc = nn.Linear(in_dim, neck_dim)
        self.neck = BNNeck(neck_dim)
        self.arcface = ArcFace(neck_dim, n_classes, margin=margin, scale=scale)
        self.inversion = TextualInversion(neck_dim, token_dim, n_tokens) if token_dim else None
        self.to_text = nn.Linear(neck_dim, text_dim) if text_dim else None

    def forward(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, in_dim) -> (pre-BN, post-BN) features (N, neck_dim)."""
        return self.neck(self.fc(vectors))

    @torch.no_grad()
    def embed(self, vectors: np.ndarray | torch.Tensor, *, batch_size: int = 4096) -> np.ndarray:
        """Post-BN retrieval features (float32 numpy, BN in inference mode) of raw shape embeddings."""
        was_training = self.training
        self.eval()
        device = self.fc.weight.device
        x = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.config["in_dim"]:
            raise ValueError(f"expected (N, {self.config['in_dim']}) vectors, got {tuple(x.shape)}")
        out = [self(x[i : i + batch_size].to(device))[1].cpu() for i in range(0, x.shape[0], batch_size)]
        self.train(was_training)
        return (torch.cat(out) if out else torch.zeros(0, self.config["neck_dim"])).numpy().astype(np.float32)


def embed(head: RetrievalModel, vectors: np.ndarray) -> np.ndarray:
    """Functional form of ``RetrievalModel.embed``."""
    return head.embed(vectors)


def describe(
    model: RetrievalModel,
    names: list[str],
    emb: Embeddings,
    params: Mapping[str, Any],
    head: Mapping[str, Any],
    text_info: dict[str, Any] | None,
    *,
    steps: int,
) -> dict[str, Any]:
    """The JSON sidecar's content (without the weights' file name and sha256)."""
    meta = emb.metadata
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dict(model.config),
        "class_names": names,
        "arcface": {
            "margin": model.config["margin"],
            "scale": model.config["scale"],
            "n_classes": model.config["n_classes"],
        },
        "embedding": {"feature": "post-BN", "dim": model.config["neck_dim"], "metric": "cosine"},
        "input": {
            "dataset": params["dataset"],
            "method": params["method"],
            "dim": emb.dim,
            "model": meta.get("model"),
            "weights_sha256": meta.get("weights_sha256"),
            "preprocessing": meta.get("preprocessing"),
        },
        "text": text_info,
        "settings": dict(head),
        "seed": int(params["seed"]),
        "steps": int(steps),
    }


def save_retrieval_head(
    model: RetrievalModel, description: Mapping[str, Any], safetensors_path: str | Path, json_path: str | Path
) -> dict[str, Any]:
    """Write the weights (safetensors, deterministic bytes) then the JSON sidecar, both atomically; returns the JSON.

    ``description`` is kept as is (``describe`` makes it in the job; may be empty), except that the format and the
    architecture are always those of ``model``: the JSON rebuilds the very model whose weights it describes."""
    safetensors_path = Path(safetensors_path)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": dict(model.config)}
    sha256 = write_weights(safetensors_path, model.state_dict(), header)
    sidecar = {**description, **header, "weights": safetensors_path.name, "sha256": sha256}
    write_json(json_path, sidecar)
    return sidecar


def load_retrieval_head(
    safetensors_path: str | Path, json_path: str | Path, *, device: str | torch.device = "cpu"
) -> RetrievalModel:
    """Rebuild a published head (sha256 checked against the JSON) in eval mode; ``.embed(vectors)`` embeds."""
    sidecar = read_sidecar(json_path, fmt=FORMAT, version=FORMAT_VERSION, what="retrieval head")
    tensors = load_verified(safetensors_path, sidecar.get("sha256"), json_path, device=device)
    c = sidecar["config"]
    model = RetrievalModel(
        c["in_dim"],
        c["neck_dim"],
        c["n_classes"],
        margin=c["margin"],
        scale=c["scale"],
        token_dim=c["token_dim"],
        text_dim=c["text_dim"],
        n_tokens=c["n_tokens"],
    )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{safetensors_path}: weights do not fit the head described by {json_path}: {exc}") from exc
    return model.to(device).eval()
