"""MAE objective: what the encoder sees, the loss against a manual computation, options, overfitting."""

from __future__ import annotations

import pytest
import torch

from overfit import overfit, seeded, single_thread, tiny_encoder  # noqa: F401 (single_thread: autouse fixture)
from pipeline3d.objectives import build_objective
from pipeline3d.objectives.masks import sample_token_mask
from synthetic_tokens import make_batch, n_positions

NP, NR = 8, 6


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mae(**cfg):
    enc = tiny_encoder(n_positions(NP, NR))
    return seeded(1, lambda: build_objective("mae", enc, cfg))


class Spy:
    """Records the arguments of the encoder's forward calls."""

    def __init__(self, encoder):
        self.calls, self._forward = [], encoder.forward
        encoder.forward = self

    def __call__(self, feat, type_id, pos, valid, **kw):
        self.calls.append(dict(feat=feat, type_id=type_id, pos=pos, valid=valid, **kw))
        return self._forward(feat, type_id, pos, valid, **kw)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_encoder_sees_zeroed_features_with_types_and_positions_kept(bidirectional):
    b = make_batch(3, NP, NR, no_ray_samples=(1,), seed=1)
    obj = _mae(mask_ratio=0.5, bidirectional=bidirectional)
    spy = Spy(obj.encoder)
    _, logs = obj(b, step=0, total_steps=1, generator=gen(7))
    (call,) = spy.calls
    mask = sample_token_mask(b["type_id"], b["valid"], 0.5, gen(7))
    assert call["causal"] is (not bidirectional)
    assert torch.equal(call["type_id"], b["type_id"]) and torch.equal(call["pos"], b["pos"])
    assert call["feat"][mask].abs().sum() == 0
    assert torch.equal(call["feat"][~mask], b["feat"][~mask])
    assert logs["n_masked"] == int(mask.sum()) > 0


@pytest.mark.parametrize("normalize", [True, False])
def test_loss_is_mse_to_the_clean_content_embedding_at_masked_positions(normalize):
    b = make_batch(2, NP, NR, seed=2)
    obj = _mae(mask_ratio=0.4, normalize_target=normalize).eval()
    loss, _ = obj(b, step=0, total_steps=1, generator=gen(3))
    mask = sample_token_mask(b["type_id"], b["valid"], 0.4, gen(3))
    with torch.no_grad():
        enc = obj.encoder
        masked = b["feat"] * (~mask)[..., None]
        h = enc(masked, b["type_id"], b["pos"], b["valid"], causal=False).h
        target = enc.token_mlp(b["feat"]) + enc.type_emb(b["type_id"])
        if normalize:
            target = (target - target.mean(-1, keepdim=True)) / torch.sqrt(
                target.var(-1, unbiased=False, keepdim=True) + 1e-5
            )
        expected = ((obj.decoder(h) - target)[mask] ** 2).mean()
    assert loss.item() == pytest.approx(float(expected), rel=1e-4)


def test_full_target_and_normalised_target_options():
    b = make_batch(2, NP, NR, seed=2)
    base = _mae().eval()
    losses = {}
    for cfg in ({}, {"target": "full"}, {"normalize_target": False}):
        obj = _mae(**cfg).eval()
        obj.load_state_dict(base.state_dict())
        losses[str(cfg)] = obj(b, step=0, total_steps=1, generator=gen())[0].item()
    assert len({round(v, 6) for v in losses.values()}) == 3


def test_ema_target_encoder_is_frozen_saved_and_follows_the_student():
    obj = _mae(target_encoder="ema", ema_momentum=0.5)
    assert all(not p.requires_grad for p in obj.teacher.parameters())
    assert any(k.startswith("teacher.") for k in obj.state_dict())
    assert not any(p is q for p in obj.trainable_parameters() for q in obj.teacher.parameters())
    w_s, w_t = obj.encoder.type_emb.weight, obj.teacher.type_emb.weight
    with torch.no_grad():
        w_s.add_(1.0)
    before = w_t.clone()
    obj.after_step()
    torch.testing.assert_close(w_t, 0.5 * before + 0.5 * w_s.detach())


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="mask_ratio"):
        _mae(mask_ratio=1.0)
    with pytest.raises(ValueError, match="target_encoder"):
        _mae(target_encoder="teacher")


@pytest.mark.parametrize(
    "cfg", [{}, {"bidirectional": False}, {"target_encoder": "ema"}], ids=["bidirectional", "causal", "ema"]
)
def test_overfits_a_tiny_batch(cfg):
    b = make_batch(4, NP, NR, no_ray_samples=(2,), seed=4)
    losses = overfit(_mae(**cfg), b, steps=40, lr=3e-3)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
