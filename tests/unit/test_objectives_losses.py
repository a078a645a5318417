"""Loss primitives against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from overfit import single_thread  # noqa: F401 (autouse fixture)
from pipeline3d.objectives.losses import coherence, cosine_loss, info_nce, masked_mse


def test_cosine_loss_on_crafted_embeddings():
    pred = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 3.0]]])
    target = torch.tensor([[[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0], [1.0, 0.0]]])
    # 1 - cos: 0 (same direction, any scale), 1 (orthogonal), 2 (opposite), 1 - 1/sqrt(2)
    keep = torch.tensor([[True, True, True, False]])
    assert float(cosine_loss(pred, target, keep)) == pytest.approx((0 + 1 + 2) / 3)
    keep = torch.tensor([[False, False, False, True]])
    assert float(cosine_loss(pred, target, keep)) == pytest.approx(1 - 1 / math.sqrt(2))


def test_empty_selection_gives_a_differentiable_zero():
    pred = torch.randn(2, 3, 4, requires_grad=True)
    loss = cosine_loss(pred, torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_masked_mse_uses_only_selected_positions():
    pred = torch.tensor([[[1.0, 2.0], [10.0, 10.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    assert float(masked_mse(pred, target, torch.tensor([[True, False]]))) == pytest.approx((1 + 4) / 2)


def test_info_nce_two_by_two_matches_the_formula():
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    k = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # unit: (1,0), (0,1)
    tau = 0.5
    # cosines: q0.k0 = 1, q0.k1 = 0; q1.k0 = 0.6, q1.k1 = 0.8
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0 / tau)))
    l1 = -math.log(math.exp(0.8 / tau) / (math.exp(0.6 / tau) + math.exp(0.8 / tau)))
    assert float(info_nce(q, k, tau)) == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_info_nce_prefers_matching_pairs():
    x = torch.eye(4)
    assert float(info_nce(x, x, 0.1)) < 1e-3
    assert float(info_nce(x, x.roll(1, 0), 0.1)) > 5.0


def test_coherence_is_the_mean_pairwise_cosine():
    assert coherence(torch.tensor([[1.0, 0.0], [5.0, 0.0]])) == pytest.approx(1.0)  # collapsed
    assert coherence(torch.eye(4) * 3) == pytest.approx(1 / 4)
    x = torch.randn(6, 3)
    n = torch.nn.functional.normalize(x, dim=-1)
    assert coherence(x) == pytest.approx(float((n @ n.T).mean()), rel=1e-5)
