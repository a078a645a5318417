"""What every objective is: an ``nn.Module`` owning the encoder (``objective.encoder``) and its heads."""

from __future__ import annotations

import torch
from torch import nn


class Objective(nn.Module):
    """``forward(batch, *, step, total_steps, generator) -> (loss, logs)`` and ``after_step()``.

    ``logs`` maps term names to Python floats (what the loop writes to metrics.jsonl). Every random draw of an
    objective comes from the ``generator`` the loop passes, so a resumed run draws the same masks.
    """

    encoder: nn.Module

    def after_step(self) -> None:
        """Called by the loop after each optimiser step (EMA teacher updates); no-op by default."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """``parameters()`` minus frozen ones (an EMA teacher, a frozen encoder)."""
        return [p for p in self.parameters() if p.requires_grad]


def uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """U[0,1) draws from ``generator`` (on the generator's device), moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)
