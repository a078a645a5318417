"""What every objective is: an ``nn.Module`` owning the encoder (``objective.encoder``) and its heads."""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

# What an objective logs per term: detached scalar tensors (left on the device; the loop brings all of a step's
# terms to the host in one transfer) or plain floats.
Logs = dict[str, Union[torch.Tensor, float]]


class Objective(nn.Module):
    """``forward(batch, *, step, total_steps, generator) -> (loss, logs)`` and ``after_step()``.

    ``logs`` maps term names to detached scalar tensors or floats (``Logs``; the loop averages them and writes them
    to metrics.jsonl). Every random draw of an
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
