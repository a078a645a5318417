"""Run a loss in float32 even inside an autocast region.

Casting inputs with ``.float()`` is not enough: autocast re-casts matmul inputs to bf16/fp16. Cosines near 1
(margins of 0.1-0.3) and logits scaled by 30-100 lose too much in bf16, so the metric losses switch autocast off.
"""

from __future__ import annotations

import torch


def fp32(x: torch.Tensor) -> torch.autocast:
    """A context that disables autocast on ``x``'s device (use with ``.float()`` on the inputs)."""
    return torch.autocast(device_type=x.device.type, enabled=False)
