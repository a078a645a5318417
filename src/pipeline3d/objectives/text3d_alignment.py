"""The text-3D alignment objective (HSE-style): frozen shape vectors -> MLP projection into the space of a partially
fine-tuned open_clip text tower, trained with a symmetric InfoNCE whose temperature is learned.

Its files (``save_alignment`` / ``load_alignment``) are in ``pipeline3d.embed.text3d_alignment``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..models.heads import ProjectionHead
from ..models.text_tower import PartiallyFrozenTextTower
from .infonce import SymmetricInfoNCE


class TextShapeAlignment(nn.Module):
    """The training objective: ``forward({"tokens", "shape"}) -> (InfoNCE loss, logs)``.

    Its state dict leaves out the frozen text weights (they are rebuilt from the base weights, and would make every
    checkpoint as large as the whole text model); ``load_state_dict`` accepts exactly that.
    ``lr_scale``: the projection and the temperature learn at ``head_lr_scale`` x the text tower's rate.
    """

    def __init__(
        self,
        tower: PartiallyFrozenTextTower,
        projection: ProjectionHead,
        loss: SymmetricInfoNCE,
        *,
        head_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.text_tower, self.projection, self.loss = tower, projection, loss
        self.head_lr_scale = float(head_lr_scale)
        self._frozen = {f"text_tower.model.{k}" for k in tower.frozen_keys()}

    def lr_scale(self, name: str) -> float:
        return 1.0 if name.startswith("text_tower.") else self.head_lr_scale

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        *,
        step: int = 0,
        total_steps: int = 0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = batch["tokens"]
        text = self.text_tower.encode(tokens)
        shape = self.projection(batch["shape"])
        # identical texts in a batch (class prompts: every shape of a class has the same one) are no negatives
        same_text = (tokens[:, None, :] == tokens[None, :, :]).all(dim=-1)
        return self.loss(shape, text, same_text)

    def after_step(self) -> None:
        self.loss.after_step()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        for key in [k for k in state if k[len(prefix) :] in self._frozen]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if k not in self._frozen]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"alignment state does not fit: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
        return result
