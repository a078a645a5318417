"""Learning-rate schedule: linear warm-up then cosine decay, a pure function of the step.

Deriving the rate from the step (instead of keeping a scheduler object) means a resumed run cannot drift from an
uninterrupted one: there is no scheduler state to save or to forget to save.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """The learning rate of optimiser step ``step`` (0-based) out of ``total_steps``.

    Warm-up rises linearly to ``base_lr`` over ``warmup_steps`` steps (step 0 already gets a non-zero rate, so no
    step is wasted); the rest follows half a cosine from ``base_lr`` down to ``base_lr * min_lr_ratio``, reached at
    the last step. Steps past the end keep the minimum.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    warmup_steps = max(0, min(warmup_steps, total_steps))
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    min_lr = base_lr * min_lr_ratio
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 1:
        return base_lr if step < total_steps else min_lr
    progress = min(1.0, (step - warmup_steps) / (decay_steps - 1))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
