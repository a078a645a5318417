"""Shared helpers for the model/objective tests: seeded tiny encoders and a short overfit loop."""

from __future__ import annotations

import pytest
import torch

from pipeline3d.models import create_encoder


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors run fastest on one thread; two intra-op threads on a busy 2-core machine spin-wait for
    seconds. Test modules import this fixture to activate it; the previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_encoder(n_positions: int, *, seed: int = 0, **overrides) -> torch.nn.Module:
    """``query_nepa_tiny`` (d=32, 2 blocks) initialised from ``seed`` without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_encoder("query_nepa_tiny", n_positions=n_positions, **overrides)


def seeded(seed: int, build):
    """Call ``build()`` (e.g. an objective constructor that creates heads) under a fixed torch seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def overfit(
    objective, batch: dict[str, torch.Tensor], *, steps: int = 40, lr: float = 3e-3, mask_seed: int | None = None
) -> list[float]:
    """AdamW on one fixed batch; returns the loss at every step. ``mask_seed`` fixes the objective's random
    draws (same generator seed each step); None draws fresh ones per step (seeded by the step)."""
    opt = torch.optim.AdamW(objective.trainable_parameters(), lr=lr, weight_decay=0.0)
    objective.train()
    losses = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(mask_seed if mask_seed is not None else 1000 + step)
        loss, logs = objective(batch, step=step, total_steps=steps, generator=gen)
        assert torch.isfinite(loss), logs
        opt.zero_grad()
        loss.backward()
        opt.step()
        objective.after_step()
        losses.append(loss.item())
    return losses
