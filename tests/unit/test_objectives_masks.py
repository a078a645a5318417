"""Dual attention mask (per sample, warm-up ramp, window, type-aware) and the MAE/CMAE token mask."""

from __future__ import annotations

import pytest
import torch

from overfit import single_thread  # noqa: F401 (autouse fixture)
from pipeline3d.models.token_types import A_POINT, BOS, EOS, PAD, Q_POINT, content_tokens
from pipeline3d.objectives.masks import dual_mask_probs, mask_features, sample_dual_mask, sample_token_mask, warmup_ramp
from synthetic_tokens import make_batch


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_warmup_ramp_is_a_pure_linear_function_of_step():
    assert warmup_ramp(0, 1000, 0.05) == 0.0
    assert warmup_ramp(25, 1000, 0.05) == pytest.approx(0.5)
    assert warmup_ramp(50, 1000, 0.05) == 1.0 and warmup_ramp(999, 1000, 0.05) == 1.0
    assert warmup_ramp(0, 1000, 0.0) == 1.0  # no warm-up: full strength from the start
    assert dual_mask_probs(10, 1000, near=0.4, far=0.2, warmup_frac=0.05) == pytest.approx((0.08, 0.04))
    with pytest.raises(ValueError, match="dual_mask_near"):
        dual_mask_probs(0, 10, near=1.5, far=0.0, warmup_frac=0.0)


def test_step_zero_of_the_warmup_blocks_nothing():
    b = make_batch(3, 6, 4)
    p_near, p_far = dual_mask_probs(0, 100, near=0.9, far=0.9, warmup_frac=0.1)
    assert (
        sample_dual_mask(
            b["type_id"], b["valid"], p_near=p_near, p_far=p_far, window=4, type_aware=False, generator=gen()
        )
        is None
    )


def test_dual_mask_is_drawn_per_sample_and_only_on_past_edges():
    b = make_batch(2, 12, 10)
    b = {k: v[:1].expand(2, *v.shape[1:]) if k in ("type_id", "valid") else v for k, v in b.items()}
    m = sample_dual_mask(b["type_id"], b["valid"], p_near=0.5, p_far=0.5, window=4, type_aware=False, generator=gen())
    T = b["type_id"].shape[1]
    assert m.shape == (2, T, T)
    assert not torch.equal(m[0], m[1])  # two identical samples, two different masks
    assert not m.diagonal(dim1=1, dim2=2).any()
    assert not (m & torch.ones(T, T, dtype=torch.bool).triu()).any()  # never the diagonal or the future
    frac = m.float().sum() / (2 * T * (T - 1) / 2)
    assert 0.4 < float(frac) < 0.6
    # same generator seed -> same masks
    again = sample_dual_mask(
        b["type_id"], b["valid"], p_near=0.5, p_far=0.5, window=4, type_aware=False, generator=gen()
    )
    assert torch.equal(m, again)


def test_dual_mask_window_separates_near_and_far():
    b = make_batch(2, 20, 20)
    T = b["type_id"].shape[1]
    m = sample_dual_mask(b["type_id"], b["valid"], p_near=1.0, p_far=0.0, window=3, type_aware=False, generator=gen())
    dist = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    assert torch.equal(m[0], (dist >= 1) & (dist <= 3))
    m = sample_dual_mask(b["type_id"], b["valid"], p_near=0.0, p_far=1.0, window=3, type_aware=False, generator=gen())
    assert torch.equal(m[1], dist > 3)


def test_type_aware_mask_blocks_only_query_pairs_of_the_same_sample():
    b = make_batch(2, 6, 4, qa=True)
    t = b["type_id"]
    m = sample_dual_mask(t, b["valid"], p_near=1.0, p_far=1.0, window=2, type_aware=True, generator=gen())
    rows, i, j = m.nonzero(as_tuple=True)
    assert rows.numel() > 0
    query = {1, 2, 5, 7}
    assert all(int(t[r, a]) in query and int(t[r, c]) in query for r, a, c in zip(rows, i, j))
    assert not ((t == A_POINT)[:, :, None] & m).any()
    assert ((t == Q_POINT)[:, :, None] & m).any()


def test_token_mask_counts_and_eligibility():
    b = make_batch(4, 10, 7, no_ray_samples=(2,))
    m = sample_token_mask(b["type_id"], b["valid"], 0.4, gen(1))
    eligible = content_tokens(b["type_id"], b["valid"])
    assert torch.equal(m.sum(1), (eligible.sum(1) * 0.4).long())  # int(0.4 * n) per sample
    assert not (m & ~eligible).any()  # never BOS / EOS / PAD
    for special in (BOS, EOS, PAD):
        assert not m[b["type_id"] == special].any()
    assert not torch.equal(m[0], m[1])
    assert torch.equal(m, sample_token_mask(b["type_id"], b["valid"], 0.4, gen(1)))


def test_mask_features_zeroes_only_masked_tokens():
    feat = torch.ones(1, 3, 15)
    out = mask_features(feat, torch.tensor([[False, True, False]]))
    assert out[0, 1].abs().sum() == 0 and torch.equal(out[0, [0, 2]], feat[0, [0, 2]])
