"""Learning-rate schedule and optimiser parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline3d.train.optim import build_optimizer, param_groups
from pipeline3d.train.schedule import lr_at
from train_toy import ToyObjective

KW = {"base_lr": 1e-3, "warmup_steps": 10, "total_steps": 110, "min_lr_ratio": 0.1}


def test_warmup_is_linear_from_the_first_step():
    assert [lr_at(s, **KW) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])


def test_cosine_decays_monotonically_to_the_minimum_at_the_last_step():
    lrs = [lr_at(s, **KW) for s in range(10, 110)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_at(60, **KW) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert lr_at(500, **KW) == pytest.approx(1e-4)  # past the end: stays at the minimum


def test_schedule_edge_cases():
    assert lr_at(0, base_lr=1.0, warmup_steps=0, total_steps=1, min_lr_ratio=0.0) == 1.0
    assert lr_at(3, base_lr=1.0, warmup_steps=0, total_steps=4, min_lr_ratio=0.5) == pytest.approx(0.5)
    assert lr_at(5, base_lr=1.0, warmup_steps=0, total_steps=10, min_lr_ratio=1.0) == 1.0  # constant
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_at(-1, **KW)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        lr_at(0, **{**KW, "min_lr_ratio": 2.0})


class _WithFreeParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(8, 4))
        self.mask_token = nn.Parameter(torch.zeros(1, 4))
        self.scale = nn.Parameter(torch.ones(4, 4))  # a free matrix that is not a table: decayed
        self.body = ToyObjective(noise=False)
        self.tied = nn.Linear(4, 4)
        self.tied_copy = self.tied  # the same parameters twice must be placed once


def test_decay_only_on_weight_matrices():
    groups = {g["weight_decay"]: set(g["names"]) for g in param_groups(_WithFreeParams(), 0.05)}
    assert groups[0.05] == {
        "scale",
        "body.encoder.inp.weight",
        "body.encoder.mid.weight",
        "body.head.weight",
        "tied.weight",
    }
    assert groups[0.0] == {
        "pos_embed",
        "mask_token",
        "body.encoder.inp.bias",
        "body.encoder.kind_embed.weight",
        "body.encoder.norm.weight",
        "body.encoder.norm.bias",
        "body.encoder.mid.bias",
        "body.head.bias",
        "tied.bias",
    }
    # The frozen EMA teacher is not optimised at all.
    assert not any("teacher" in n for names in groups.values() for n in names)


def test_optimizer_covers_every_trainable_parameter_once():
    model = _WithFreeParams()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(in_opt) == len({id(p) for p in in_opt}) == len(trainable)
    assert opt.defaults["betas"] == (0.9, 0.95)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), lr=1e-3, weight_decay=0.0, betas=(0.9, 0.99))
