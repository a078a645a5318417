"""build_objective: names, config-key checking, the shared interface of every objective."""

from __future__ import annotations

import pytest
import torch

from overfit import seeded, single_thread, tiny_encoder  # noqa: F401 (single_thread: autouse fixture)
from patch_fixtures import patch_batch, tiny_patch_encoder
from pipeline3d.objectives import OBJECTIVES, build_objective, objective_keys
from synthetic_tokens import make_batch, n_positions

CONFIGS = {
    "nepa": {
        "qa_answers_only": True,
        "target": "content",
        "dual_mask_near": 0.1,
        "dual_mask_far": 0.05,
        "dual_mask_window": 4,
        "dual_mask_warmup_frac": 0.05,
        "dual_mask_type_aware": False,
    },
    "mae": {"mask_ratio": 0.4, "bidirectional": True},
    "cmae": {
        "mask_ratio": 0.5,
        "ema_momentum": 0.99,
        "occ_grid": 2,
        "lambda_occ": 1.0,
        "lambda_feat": 1.0,
        "lambda_nce": 0.6,
        "lambda_view": 0.3,
        "temperature": 0.1,
        "feat_depths": [1, 2],
    },
    "classify": {"n_classes": 3, "pool": "eos", "label_smoothing": 0.1, "freeze_encoder": False},
    "point_mae": {"mask_ratio": 0.5, "decoder_depth": 1},
}
PATCH_ONLY = ("point_mae",)  # objectives that need a point-patch encoder and patch tokens


def test_contract_config_keys_are_accepted():
    for name, cfg in CONFIGS.items():
        assert set(cfg) <= set(objective_keys(name)), name


def test_unknown_objective_and_unknown_keys_are_clear_errors():
    enc = tiny_encoder(10)
    with pytest.raises(KeyError, match="nepa, mae, cmae, point_mae, classify"):
        build_objective("simclr", enc, {})
    with pytest.raises(ValueError, match=r"mask_raito.*accepted keys.*mask_ratio"):
        build_objective("mae", enc, {"mask_raito": 0.5})


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_has_the_shared_interface(name):
    if name in PATCH_ONLY:
        b, encoder = patch_batch(3), tiny_patch_encoder()
    else:
        b = make_batch(3, 4, 3, seed=1, occ_grid=2, two_views=True, n_classes=3)
        encoder = tiny_encoder(n_positions(4, 3))
    obj = seeded(0, lambda: build_objective(name, encoder, CONFIGS[name]))
    assert obj.encoder.d_model == encoder.d_model
    loss, logs = obj(b, step=1, total_steps=10, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    # scalars the loop can average: floats, or detached 0-d tensors left on the device (one transfer per step)
    assert logs and all(
        isinstance(v, float) or (torch.is_tensor(v) and v.ndim == 0 and not v.requires_grad) for v in logs.values()
    )
    loss.backward()
    assert all(p.grad is not None for p in obj.trainable_parameters())  # every trainable head is used
    obj.after_step()
    # same generator seed -> same loss (all randomness comes from the generator)
    again, _ = obj(b, step=1, total_steps=10, generator=torch.Generator().manual_seed(0))
    obj.after_step()
    third, _ = obj(b, step=1, total_steps=10, generator=torch.Generator().manual_seed(0))
    if name != "cmae":  # cmae's teacher moved in after_step (its EMA), everything else is unchanged
        assert torch.equal(again, third)
