"""Metric-learning heads: ProjectionHead, BNNeck, TextualInversion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from overfit import single_thread  # noqa: F401 (autouse fixture)
from pipeline3d.models.heads import BNNeck, ProjectionHead, TextualInversion


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_projection_head_widths_and_unit_rows():
    torch.manual_seed(0)
    head = ProjectionHead(16, 8, hidden=32, layers=3)
    assert [(m.in_features, m.out_features) for m in _linears(head)] == [(16, 32), (32, 32), (32, 8)]
    out = head(torch.randn(5, 16))
    assert out.shape == (5, 8)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_projection_head_single_layer_and_no_normalisation():
    head = ProjectionHead(6, 4, layers=1, normalize=False)
    (linear,) = _linears(head)
    x = torch.randn(3, 6)
    torch.testing.assert_close(head(x), linear(x))
    assert not torch.allclose(head(x).norm(dim=1), torch.ones(3))
    assert [(m.in_features, m.out_features) for m in _linears(ProjectionHead(6, 4))] == [(6, 6), (6, 4)]
    with pytest.raises(ValueError, match="layers"):
        ProjectionHead(6, 4, layers=0)


def test_projection_head_trains():
    torch.manual_seed(0)
    head = ProjectionHead(4, 3)
    x = torch.randn(8, 4)
    head(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_bnneck_returns_input_and_a_zero_shift_batchnorm():
    torch.manual_seed(0)
    neck = BNNeck(4)
    x = torch.randn(16, 4) * 3 + 5
    before, after = neck(x)
    assert before is x
    # training mode: batch-normalised per channel; weight 1 and the frozen zero bias leave it centred
    torch.testing.assert_close(after.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(after.var(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    assert not neck.bn.bias.requires_grad
    opt = torch.optim.SGD([p for p in neck.parameters() if p.requires_grad], lr=1.0)
    (after * torch.arange(4.0)).pow(2).sum().backward()
    opt.step()
    assert torch.equal(neck.bn.bias, torch.zeros(4))
    assert neck.bn.weight.grad is not None


def test_textual_inversion_shapes_and_gradient():
    torch.manual_seed(0)
    ti = TextualInversion(10, 6, 3)
    x = torch.randn(4, 10, requires_grad=True)
    tokens = ti(x)
    assert tokens.shape == (4, 3, 6)
    assert not torch.allclose(tokens[:, 0], tokens[:, 1])  # each pseudo-token has its own output rows
    tokens.sum().backward()
    assert x.grad.abs().sum() > 0
    assert _linears(ti)[0].out_features == 10  # hidden defaults to max(in_dim, token_dim)
    with pytest.raises(ValueError, match="n_tokens"):
        TextualInversion(10, 6, 0)


def test_projection_standardizes_its_input_with_saved_statistics():
    torch.manual_seed(0)
    # pooled features dominated by one shared direction: what a mean-pooled frozen encoder can give
    shared = torch.randn(16)
    x = shared + 1e-3 * torch.randn(40, 16)
    head = ProjectionHead(16, 8, hidden=32, standardize=True)
    head.fit_input(x.numpy())
    z = (x - head.input_mean) * head.input_scale
    assert torch.allclose(z.mean(0), torch.zeros(16), atol=1e-4)  # float32 inputs: ~1e-7 relative, times the scale
    assert abs(float(z.pow(2).sum(1).mean()) - 1.0) < 1e-3  # unit RMS: the 1e-3 differences are now order one
    out = head(x).detach()
    assert float((out @ out.T).min()) < 0.9  # distinct outputs, where the raw inputs have cosine ~1
    clone = ProjectionHead(16, 8, hidden=32, standardize=True)
    clone.load_state_dict(head.state_dict())  # the statistics travel with the weights
    assert torch.equal(clone(x).detach(), out)
    with pytest.raises(ValueError, match="standardize=False"):
        ProjectionHead(16, 8).fit_input(x)
