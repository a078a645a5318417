"""PromptSG's multimodal interaction (models.interaction): per-item attention, padding ignored, gradients reach
the prompt and the tokens."""

from __future__ import annotations

import pytest
import torch

from pipeline3d.models.interaction import MultiModalInteraction


def _module(seed: int = 0, layers: int = 2) -> MultiModalInteraction:
    torch.manual_seed(seed)
    return MultiModalInteraction(16, 12, heads=4, layers=layers).eval()


def _inputs(seed: int = 1, b: int = 4, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 12, generator=g), torch.randn(b, t, 16, generator=g)


def test_an_item_sees_only_its_own_tokens() -> None:
    module, (prompt, tokens) = _module(), _inputs()
    out = module(prompt, tokens)
    other = tokens.clone()
    other[1:] = tokens[1:][torch.tensor([2, 0, 1])]  # shuffle the other items' token sets among them
    other[2, 3] += 5.0  # and change one of them outright
    again = module(prompt, other)
    assert torch.equal(out[0], again[0])
    assert not torch.allclose(out[2], again[2])  # the changed item's own output does move


def test_token_order_does_not_matter_and_padding_is_ignored() -> None:
    module, (prompt, tokens) = _module(), _inputs()
    perm = torch.randperm(tokens.shape[1], generator=torch.Generator().manual_seed(3))
    assert torch.allclose(module(prompt, tokens), module(prompt, tokens[:, perm]), atol=1e-5)
    valid = torch.ones(tokens.shape[:2], dtype=torch.bool)
    valid[:, -2:] = False
    junk = tokens.clone()
    junk[:, -2:] = 1e3  # padding with absurd values changes nothing
    assert torch.allclose(module(prompt, tokens, valid), module(prompt, junk, valid), atol=1e-5)
    assert torch.allclose(module(prompt, tokens, valid), module(prompt[:, :], tokens[:, :-2]), atol=1e-5)


def test_the_prompt_steers_the_output_and_gradients_reach_everything() -> None:
    module, (prompt, tokens) = _module(layers=1), _inputs()
    module.train()
    prompt.requires_grad_(True)
    tokens.requires_grad_(True)
    module(prompt, tokens).square().sum().backward()
    assert prompt.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    module.eval()
    with torch.no_grad():
        assert not torch.allclose(module(prompt, tokens), module(prompt.flip(0), tokens))


def test_bad_shapes_and_empty_items_are_refused() -> None:
    module, (prompt, tokens) = _module(), _inputs()
    with pytest.raises(ValueError, match="need prompt"):
        module(prompt[:2], tokens)
    with pytest.raises(ValueError, match="at least one valid token"):
        module(prompt, tokens, torch.zeros(tokens.shape[:2], dtype=torch.bool))
