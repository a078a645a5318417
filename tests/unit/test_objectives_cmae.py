"""CMAE objective: EMA teacher (frozen, saved, exact EMA), the four terms, errors, resume, overfitting."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from overfit import overfit, seeded, single_thread, tiny_encoder  # noqa: F401 (single_thread: autouse fixture)
from pipeline3d.objectives import build_objective
from pipeline3d.objectives.cmae import default_feat_depths
from pipeline3d.objectives.losses import info_nce
from pipeline3d.objectives.masks import sample_token_mask
from synthetic_tokens import make_batch, n_positions

NP, NR, G = 8, 6, 4


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cmae(seed: int = 0, **cfg):
    cfg = {"occ_grid": G, **cfg}
    enc = tiny_encoder(n_positions(NP, NR), seed=seed)
    return seeded(seed + 1, lambda: build_objective("cmae", enc, cfg))


def _batch(seed: int = 0, **kw):
    return make_batch(4, NP, NR, no_ray_samples=(1,), seed=seed, occ_grid=G, two_views=True, **kw)


@pytest.mark.parametrize(
    "depth, expected",
    [(8, [2, 4, 6, 8]), (4, [1, 2, 3, 4]), (6, [2, 3, 5, 6]), (2, [1, 2]), (1, [1]), (12, [3, 6, 9, 12])],
)
def test_default_feature_depths_are_evenly_spaced(depth, expected):
    assert default_feat_depths(depth) == expected


def test_defaults_and_heads():
    obj = _cmae()
    assert obj.lambdas == {"occ": 1.0, "feat": 1.0, "nce": 0.6, "view": 0.3}
    assert obj.feat_depths == [1, 2] and set(obj.feat_decoders) == {"1", "2"}  # tiny encoder: depth 2
    off = _cmae(lambda_occ=0.0, lambda_view=0.0)
    assert off.occ_head is None and off.view_head is None and set(off.lambdas) == {"feat", "nce"}


def test_teacher_is_frozen_in_eval_mode_and_in_the_state_dict():
    obj = _cmae().train()
    assert not obj.teacher.training and obj.encoder.training
    assert all(not p.requires_grad for p in obj.teacher.parameters())
    teacher_ids = {id(p) for p in obj.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in obj.trainable_parameters()}
    keys = obj.state_dict().keys()
    assert {f"teacher.{k}" for k in obj.encoder.state_dict()} <= set(keys)


def test_teacher_sees_the_full_input_and_the_student_the_masked_one():
    b = _batch()
    obj = _cmae(mask_ratio=0.5)
    seen = {}

    def hook(name):
        def record(module, args, kwargs, out):
            seen.setdefault(name, (args, kwargs))  # first call (the teacher also encodes view 2); returns None

        return record

    for name in ("encoder", "teacher"):
        getattr(obj, name).register_forward_hook(hook(name), with_kwargs=True)
    obj(b, step=0, total_steps=1, generator=gen(5))
    mask = sample_token_mask(b["type_id"], b["valid"], 0.5, gen(5))
    (s_feat, *_), s_kw = seen["encoder"]
    (t_feat, *_), t_kw = seen["teacher"]
    assert torch.equal(t_feat, b["feat"]) and s_feat[mask].abs().sum() == 0
    assert torch.equal(s_feat[~mask], b["feat"][~mask])
    assert s_kw["causal"] is False and t_kw["causal"] is False
    assert tuple(t_kw["return_layers"]) == (1, 2)


def test_total_is_the_weighted_sum_and_every_term_is_logged():
    b = _batch()
    obj = _cmae(lambda_occ=0.7, lambda_feat=1.3, lambda_nce=0.6, lambda_view=0.3)
    loss, logs = obj(b, step=0, total_steps=1, generator=gen())
    logs = {k: float(v) for k, v in logs.items()}  # scalar tensors left on the device by the objective
    for term in ("occ_loss", "feat_loss", "nce_loss", "view_loss", "feat_loss_d1", "feat_loss_d2"):
        assert term in logs and logs[term] > 0
    expected = 0.7 * logs["occ_loss"] + 1.3 * logs["feat_loss"] + 0.6 * logs["nce_loss"] + 0.3 * logs["view_loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["feat_loss"] == pytest.approx((logs["feat_loss_d1"] + logs["feat_loss_d2"]) / 2, rel=1e-5)


def test_occupancy_and_view_terms_match_a_manual_computation():
    b = _batch()
    obj = _cmae(mask_ratio=0.5).eval()
    _, logs = obj(b, step=0, total_steps=1, generator=gen(2))
    mask = sample_token_mask(b["type_id"], b["valid"], 0.5, gen(2))
    with torch.no_grad():
        s = obj.encoder(b["feat"] * (~mask)[..., None], b["type_id"], b["pos"], b["valid"], causal=False)
        pooled = obj.encoder.pool(s, b, "mean")
        occ = F.binary_cross_entropy_with_logits(obj.occ_head(pooled), b["occ_target"])
        t2 = obj.teacher(b["v2_feat"], b["v2_type_id"], b["v2_pos"], b["v2_valid"], causal=False)
        key = obj.teacher.pool(t2, b, "mean", prefix="v2_")
        view = info_nce(obj.view_head(pooled), key, obj.temperature)
    assert logs["occ_loss"] == pytest.approx(float(occ), rel=1e-5)
    assert logs["view_loss"] == pytest.approx(float(view), rel=1e-5)


def test_token_nce_cap_draws_a_subset():
    b = _batch()
    capped = _cmae(nce_max_tokens=5)
    full = _cmae()
    full.load_state_dict(capped.state_dict())
    a = capped(b, step=0, total_steps=1, generator=gen())[1]["nce_loss"]
    c = full(b, step=0, total_steps=1, generator=gen())[1]["nce_loss"]
    assert a != pytest.approx(c) and a < c  # fewer negatives, easier task
    assert capped(b, step=0, total_steps=1, generator=gen())[1]["nce_loss"] == pytest.approx(a)


def test_after_step_is_an_exact_ema():
    obj = _cmae(ema_momentum=0.9)
    with torch.no_grad():
        for p in obj.encoder.parameters():
            p.add_(0.5)
    before = [p.clone() for p in obj.teacher.parameters()]
    obj.after_step()
    for t0, t1, s in zip(before, obj.teacher.parameters(), obj.encoder.parameters()):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s.detach())


def test_resume_from_state_dict_is_exact():
    b = _batch()
    obj = _cmae()
    overfit(obj, b, steps=3)
    buf = io.BytesIO()
    torch.save(obj.state_dict(), buf)
    buf.seek(0)
    fresh = _cmae(seed=9)  # different init: everything must come from the state dict
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    for o in (obj, fresh):
        o.train()
    la, _ = obj(b, step=3, total_steps=10, generator=gen(3))
    lb, _ = fresh(b, step=3, total_steps=10, generator=gen(3))
    assert torch.equal(la, lb)
    obj.after_step(), fresh.after_step()
    assert all(torch.equal(p, q) for p, q in zip(obj.teacher.parameters(), fresh.teacher.parameters()))


def test_missing_batch_keys_and_bad_config_are_clear_errors():
    b = _batch()
    with pytest.raises(KeyError, match="occ_target"):
        _cmae()({k: v for k, v in b.items() if k != "occ_target"}, step=0, total_steps=1, generator=gen())
    with pytest.raises(KeyError, match="two_views"):
        _cmae()({k: v for k, v in b.items() if not k.startswith("v2_")}, step=0, total_steps=1, generator=gen())
    with pytest.raises(ValueError, match="occ_grid=3"):
        _cmae(occ_grid=3)(b, step=0, total_steps=1, generator=gen())
    with pytest.raises(ValueError, match="feat_depths"):
        _cmae(feat_depths=[1, 2, 3])
    with pytest.raises(ValueError, match="occ_grid"):
        _cmae(occ_grid=0)
    # terms that are off need no batch keys
    loss, logs = _cmae(lambda_occ=0.0, lambda_view=0.0, occ_grid=0)(
        {k: v for k, v in b.items() if k != "occ_target" and not k.startswith("v2_")},
        step=0,
        total_steps=1,
        generator=gen(),
    )
    assert "occ_loss" not in logs and "view_loss" not in logs and torch.isfinite(loss)


def test_overfits_a_tiny_batch():
    b = _batch(seed=4)
    losses = overfit(_cmae(seed=4, ema_momentum=0.9), b, steps=60, lr=3e-3)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
