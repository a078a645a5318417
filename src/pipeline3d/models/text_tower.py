"""An open_clip text tower with only its last N transformer blocks (+ final norm and projection) trainable.

Layouts: a CLIP model keeps its text transformer at the top level (``transformer.resblocks``, ``ln_final``,
``text_projection``); CustomTextCLIP and CoCa keep an open_clip ``TextTransformer`` at ``model.text`` with the same
names under ``text.``. Anything else (e.g. a Hugging Face text encoder at ``model.text.transformer``) is refused
with an ``UnsupportedTextTower`` error instead of silently training the wrong weights.

Frozen parameters get ``requires_grad=False`` and their modules stay in eval mode whatever ``train()`` says, so
dropout or norm statistics in the frozen part never change. Only the trainable weights are saved
(``trainable_state``), under the keys of the open_clip model's own state dict, so they load back onto a freshly built
base tower (``load_trainable_state``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class UnsupportedTextTower(ValueError):
    """The open_clip model's text tower has a layout whose blocks we do not know how to unfreeze."""


@dataclass(frozen=True)
class TextTowerLayout:
    """Where the text tower's parts live inside the open_clip model (``prefix`` is "" or "text.")."""

    prefix: str
    n_blocks: int

    def block_prefix(self, index: int) -> str:
        return f"{self.prefix}transformer.resblocks.{index}."

    def trainable_prefixes(self, trainable_blocks: int) -> tuple[str, ...]:
        """State-dict key prefixes of the last ``trainable_blocks`` blocks, the final norm and the projection."""
        blocks = tuple(self.block_prefix(i) for i in range(self.n_blocks - trainable_blocks, self.n_blocks))
        return blocks + (f"{self.prefix}ln_final.", f"{self.prefix}text_projection")


def text_layout(model: nn.Module) -> TextTowerLayout:
    """The layout of an open_clip model's text tower; ``UnsupportedTextTower`` when it is not a known one."""
    text = getattr(model, "text", None)
    tower, prefix = (text, "text.") if isinstance(text, nn.Module) else (model, "")
    blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    if not isinstance(blocks, nn.ModuleList) or not isinstance(getattr(tower, "ln_final", None), nn.Module):
        where = f"{type(model).__name__}" + (f".text ({type(text).__name__})" if prefix else "")
        raise UnsupportedTextTower(
            f"unsupported open_clip text tower layout in {where}: expected {prefix}transformer.resblocks "
            f"(an nn.ModuleList of blocks) and {prefix}ln_final, as in open_clip's CLIP / CustomTextCLIP / CoCa with "
            "its own TextTransformer. Hugging Face text towers (model.text.transformer = a transformers model) are "
            "not supported for partial fine-tuning"
        )
    return TextTowerLayout(prefix=prefix, n_blocks=len(blocks))


def _has_prefix(key: str, prefixes: tuple[str, ...]) -> bool:
    # "text_projection" is a bare Parameter in CLIP and a Linear ("text_projection.weight") in some towers.
    return any(key.startswith(p) if p.endswith(".") else key == p or key.startswith(p + ".") for p in prefixes)


class PartiallyFrozenTextTower(nn.Module):
    """``encode(tokens)`` -> L2-normalised text features; trainable: the last ``trainable_blocks`` blocks + heads."""

    def __init__(self, model: nn.Module, trainable_blocks: int) -> None:
        super().__init__()
        self.layout = text_layout(model)
        n = self.layout.n_blocks
        if not 0 <= int(trainable_blocks) <= n:
            raise ValueError(
                f"trainable_blocks must be in [0, {n}] (the text tower has {n} blocks), got {trainable_blocks}"
            )
        self.trainable_blocks = int(trainable_blocks)
        self.model = model
        self.prefixes = self.layout.trainable_prefixes(self.trainable_blocks)
        self.model.requires_grad_(False)
        for name, param in self.model.named_parameters():
            if _has_prefix(name, self.prefixes):
                param.requires_grad_(True)
        if not any(p.requires_grad for p in self.model.parameters()):
            raise UnsupportedTextTower(f"no parameter of {type(model).__name__} matches {self.prefixes}")
        self._trainable_modules = [
            m for name, m in self.model.named_modules() if name and _has_prefix(name + ".", self.prefixes)
        ]
        self.train(False)

    def train(self, mode: bool = True) -> "PartiallyFrozenTextTower":
        self.training = mode
        self.model.eval()  # the frozen part never leaves eval mode
        for module in self._trainable_modules:
            module.training = mode
        return self

    def trainable_keys(self) -> list[str]:
        """The open_clip state-dict keys that are trained (and saved)."""
        return [k for k in self.model.state_dict() if _has_prefix(k, self.prefixes)]

    def frozen_keys(self) -> list[str]:
        return [k for k in self.model.state_dict() if not _has_prefix(k, self.prefixes)]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors, keyed as in the open_clip model's state dict (contiguous CPU copies)."""
        state = self.model.state_dict()
        return {k: state[k].detach().to("cpu").contiguous().clone() for k in self.trainable_keys()}


def load_trainable_state(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str = "text weights"
) -> None:
    """Overwrite part of an open_clip ``model`` with ``tensors`` (keys of its state dict); unknown keys or wrong
    shapes are errors naming ``source``."""
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} tensor(s) are not in the text tower, e.g. {unknown[:3]} "
            "(a different architecture?)"
        )
    bad = [
        f"{k}: {tuple(v.shape)} vs {tuple(state[k].shape)}"
        for k, v in tensors.items()
        if tuple(v.shape) != tuple(state[k].shape)
    ]
    if bad:
        raise ValueError(f"{source}: shape mismatch for {len(bad)} tensor(s), e.g. {bad[:3]}")
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value.to(state[key].dtype))
