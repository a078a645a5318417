"""Classification fine-tuning / linear probing: a head on the encoder's pooled features, cross-entropy loss."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from pipeline3d.models.heads import ClassificationHead
from pipeline3d.models.query_nepa import POOLS, pooled_dim
from pipeline3d.objectives.base import Logs, Objective


class ClassifyObjective(Objective):
    """Cross-entropy (+ label smoothing) on ``head(encoder.pool(...))``.

    Args:
        encoder: a QueryNepa-like encoder.
        n_classes: number of classes (labels must be in 0..n_classes-1).
        pool: "eos" (the last token; the reference's readout, meaningful under causal attention), "mean", "max" or
            "meanmax" (mean and max concatenated: the Point-MAE family's read-out).
        label_smoothing: cross-entropy label smoothing.
        freeze_encoder: linear probe: the encoder stays in eval mode, runs without gradient and its parameters
            get ``requires_grad=False`` (only the head trains).
        causal: run the encoder causally (as NEPA pretrains it); set false for bidirectionally pretrained encoders.
        head_hidden: hidden width of an MLP head (0 = a single Linear, as the reference).
        head_dropout: dropout before the head's last Linear.
        layer_decay: layer-wise learning-rate decay (1 = off): block i of L gets ``layer_decay ** (L + 1 - i)``
            of the learning rate, the embeddings ``layer_decay ** (L + 1)``, the final norm and the head all of it.
        probe_frac: linear probing, then fine-tuning (LP-FT): for the first ``probe_frac`` of the steps the encoder
            runs without gradient (only the head trains; its parameters get no update, not even weight decay), so
            a pretrained encoder meets a trained head instead of a random one when it starts to move.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        n_classes: int,
        pool: str = "eos",
        label_smoothing: float = 0.0,
        freeze_encoder: bool = False,
        causal: bool = True,
        head_hidden: int = 0,
        head_dropout: float = 0.0,
        layer_decay: float = 1.0,
        probe_frac: float = 0.0,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"classify pool must be one of {POOLS}, got {pool!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if not 0.0 <= probe_frac < 1.0:
            raise ValueError(f"probe_frac must be in [0, 1), got {probe_frac}")
        self.encoder = encoder
        self.head = ClassificationHead(
            pooled_dim(encoder.d_model, pool), n_classes, hidden_dim=head_hidden, dropout=head_dropout
        )
        self.layer_decay, self.probe_frac = layer_decay, probe_frac
        self.n_classes, self.pool, self.label_smoothing = n_classes, pool, label_smoothing
        self.freeze_encoder, self.causal = freeze_encoder, causal
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> "ClassifyObjective":
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def lr_scale(self, name: str) -> float:
        """Learning-rate multiplier of parameter ``name`` (layer-wise decay; read by the optimiser's groups)."""
        if self.layer_decay == 1.0 or not name.startswith("encoder."):
            return 1.0
        depth = self.encoder.depth
        parts = name.split(".")
        if parts[1] == "blocks":
            layer = int(parts[2]) + 1
        elif parts[1] == "norm":
            layer = depth + 1
        else:
            layer = 0  # embeddings
        return self.layer_decay ** (depth + 1 - layer)

    def predict_logits(self, batch: dict[str, torch.Tensor], *, probing: bool = False) -> torch.Tensor:
        """Logits (B, n_classes) for a token batch (``probing``: the encoder without gradient)."""
        grad = torch.no_grad() if self.freeze_encoder or probing else contextlib.nullcontext()
        with grad:
            out = self.encoder(batch["feat"], batch["type_id"], batch["pos"], batch["valid"], causal=self.causal)
            pooled = self.encoder.pool(out, batch, self.pool)
        return self.head(pooled)

    def forward(
        self, batch: dict[str, torch.Tensor], *, step: int, total_steps: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, Logs]:
        label = batch["label"]
        if bool(((label < 0) | (label >= self.n_classes)).any()):
            bad = sorted(set(label[(label < 0) | (label >= self.n_classes)].tolist()))
            raise ValueError(f"labels {bad} outside 0..{self.n_classes - 1} (-1 = unknown label) in a classify batch")
        logits = self.predict_logits(batch, probing=step < self.probe_frac * total_steps)
        loss = F.cross_entropy(logits, label, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(dim=1) == label).float().mean()
        return loss, {"ce_loss": loss.detach(), "acc": acc.detach()}
