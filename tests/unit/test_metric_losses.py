"""Metric-learning losses (triplet, batch-hard triplet, SupCon, ArcFace, InfoNCE) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from overfit import single_thread  # noqa: F401 (autouse fixture)
from pipeline3d.objectives.arcface import ArcFace
from pipeline3d.objectives.infonce import SymmetricInfoNCE, info_nce
from pipeline3d.objectives.supcon import supcon_loss
from pipeline3d.objectives.triplet import batch_hard_triplet_loss, triplet_loss

TOL = 1e-6


def approx(x: float) -> object:
    return pytest.approx(x, abs=TOL)


# ----------------------------------------------------------------------------------------------- triplet


def test_triplet_cosine_by_hand():
    # row 0: cos(a,p) = 0.6 -> d 0.4; cos(a,n) = 0 -> d 1; gap 0.4 - 1 + 0.2 = -0.4 -> 0, not violated
    # row 1: cos(a,p) = 0 -> d 1; cos(a,n) = 0.6 -> d 0.4; gap 1 - 0.4 + 0.2 = 0.8, violated
    # (rows are scaled on purpose: the cosine distance ignores length)
    a = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[0.6, 0.8], [0.0, 2.0]])
    n = torch.tensor([[0.0, 7.0], [3.0, 4.0]])
    loss, violated = triplet_loss(a, p, n, margin=0.2)
    assert loss.item() == approx((0.0 + 0.8) / 2)
    assert violated.tolist() == [False, True]


def test_triplet_euclidean_by_hand():
    # row 0: d(a,p) = 5, d(a,n) = 10, margin 1.5: gap -3.5 -> 0;  row 1: d(a,p) = 2, d(a,n) = 1: gap 2.5
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    p = torch.tensor([[3.0, 4.0], [1.0, 3.0]])
    n = torch.tensor([[6.0, 8.0], [2.0, 1.0]])
    loss, violated = triplet_loss(a, p, n, margin=1.5, metric="euclidean")
    assert loss.item() == approx((0.0 + 2.5) / 2)
    assert violated.tolist() == [False, True]


def test_triplet_gradient_only_through_violated_rows():
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    p = torch.tensor([[3.0, 4.0], [1.0, 3.0]])
    n = torch.tensor([[6.0, 8.0], [2.0, 1.0]])
    loss, _ = triplet_loss(a, p, n, margin=1.5, metric="euclidean")
    loss.backward()
    # row 1: d/da [ |a-p| - |a-n| ] / 2 = ((a-p)/2 - (a-n)/1) / 2 = ((0,-1) - (-1,0)) / 2 = (0.5, -0.5)
    assert a.grad[0].tolist() == [0.0, 0.0]
    assert a.grad[1].tolist() == [pytest.approx(0.5, abs=TOL), pytest.approx(-0.5, abs=TOL)]


def test_triplet_rejects_bad_input():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="same shape"):
        triplet_loss(x, x, torch.zeros(2, 2), margin=0.1)
    with pytest.raises(ValueError, match="unknown triplet metric"):
        triplet_loss(x, x, x, margin=0.1, metric="manhattan")


def test_batch_hard_euclidean_by_hand_and_picks_the_right_pairs():
    # points on a line; label 2 has a single member, so anchor 5 has no positive and is skipped
    x = torch.tensor([0.0, 1.0, 2.5, 3.0, 4.0, 10.0])
    emb = torch.stack([x, torch.zeros_like(x)], 1)
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    # anchor: hardest positive (farthest same label) / hardest negative (nearest other label) / gap with margin 1
    # 0: 2.5 (->2.5) / 3 (->3.0)   0.5      1: 1.5 (->2.5) / 2 (->3.0)  0.5     2: 2.5 (->0) / 0.5 (->3.0)  3.0
    # 3: 1 (->4.0) / 0.5 (->2.5)   1.5      4: 1 (->3.0) / 1.5 (->2.5)  0.5
    loss, violated = batch_hard_triplet_loss(emb, labels, margin=1.0, metric="euclidean")
    assert loss.item() == approx((0.5 + 0.5 + 3.0 + 1.5 + 0.5) / 5)
    assert violated.tolist() == [True, True, True, True, True, False]
    pos, neg = torch.tensor([2, 2, 0, 4, 3]), torch.tensor([3, 3, 3, 2, 2])
    explicit, _ = triplet_loss(emb[:5], emb[pos], emb[neg], margin=1.0, metric="euclidean")
    assert loss.item() == approx(explicit.item())


def test_batch_hard_cosine_by_hand():
    # 1 - cos: d01 0.4, d02 1, d03 2, d12 0.2, d13 1.6, d23 1; labels 0,0,1,1; margin 0.3
    # anchor 0: 0.4 - 1 + 0.3 < 0;  1: 0.4 - 0.2 + 0.3 = 0.5;  2: 1 - 0.2 + 0.3 = 1.1;  3: 1 - 1.6 + 0.3 < 0
    emb = torch.tensor([[1.0, 0.0], [1.2, 1.6], [0.0, 3.0], [-0.5, 0.0]], requires_grad=True)
    loss, violated = batch_hard_triplet_loss(emb, torch.tensor([0, 0, 1, 1]), margin=0.3)
    assert loss.item() == approx((0.0 + 0.5 + 1.1 + 0.0) / 4)
    assert violated.tolist() == [False, True, True, False]
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


def test_batch_hard_without_valid_anchor_is_a_differentiable_zero():
    emb = torch.randn(4, 3, requires_grad=True)
    loss, violated = batch_hard_triplet_loss(emb, torch.zeros(4, dtype=torch.long), margin=0.5)
    loss.backward()
    assert loss.item() == 0.0 and not violated.any()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_batch_hard_duplicate_rows_keep_finite_gradients():
    emb = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    loss, _ = batch_hard_triplet_loss(emb, torch.tensor([0, 0, 1]), margin=5.0, metric="euclidean")
    loss.backward()
    assert torch.isfinite(emb.grad).all()


# ----------------------------------------------------------------------------------------------- supcon


def test_supcon_single_positive_by_hand():
    # z0 = (1,0), z1 = (0.6,0.8), z2 = (0,1); labels 0, 0, 1; T = 0.5 -> logits z.z / 0.5
    # anchor 0: positive 1 (1.2) among {1: 1.2, 2: 0}    -> log(1 + e^-1.2)
    # anchor 1: positive 0 (1.2) among {0: 1.2, 2: 1.6}  -> log(1 + e^0.4)
    # anchor 2: no positive, skipped
    f = torch.tensor([[3.0, 0.0], [0.6, 0.8], [0.0, 2.0]], requires_grad=True)
    loss = supcon_loss(f, torch.tensor([0, 0, 1]), temperature=0.5)
    assert loss.item() == approx((math.log(1 + math.exp(-1.2)) + math.log(1 + math.exp(0.4))) / 2)
    loss.backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


def test_supcon_averages_over_positives_outside_the_log():
    # z0 = (1,0), z1 = (0.6,0.8), z2 = (0.8,0.6), z3 = (0,1); labels 0,0,0,1; T = 1
    # cosines: 01 .6, 02 .8, 03 0, 12 .96, 13 .8, 23 .6
    f = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]])
    e = math.exp
    l0 = -(0.6 + 0.8) / 2 + math.log(e(0.6) + e(0.8) + e(0.0))
    l1 = -(0.6 + 0.96) / 2 + math.log(e(0.6) + e(0.96) + e(0.8))
    l2 = -(0.8 + 0.96) / 2 + math.log(e(0.8) + e(0.96) + e(0.6))
    assert float(supcon_loss(f, torch.tensor([0, 0, 0, 1]), temperature=1.0)) == approx((l0 + l1 + l2) / 3)


def test_supcon_views_are_flattened_and_no_positive_is_zero():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 2, 4, generator=g)
    labels = torch.tensor([0, 1, 2])
    flat = supcon_loss(f.reshape(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]), temperature=0.1)
    assert float(supcon_loss(f, labels, temperature=0.1)) == approx(flat.item())
    x = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(x, labels, temperature=0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


# ----------------------------------------------------------------------------------------------- arcface


def _arcface(margin: float = 0.5, scale: float = 2.0) -> ArcFace:
    head = ArcFace(2, 3, margin=margin, scale=scale)
    with torch.no_grad():  # class centres (1,0), (0,1), (-1,0); lengths differ on purpose (rows are normalised)
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    return head


def test_arcface_by_hand():
    m, s = 0.5, 2.0
    head = _arcface(m, s)
    # f0 = (0.6,0.8): cos 0.6, 0.8, -0.6; label 0 -> cos(acos(0.6) + m) = 0.6 cos m - 0.8 sin m
    # f1 = (-0.96,0.28): cos -0.96, 0.28, 0.96; label 0 -> theta + m > pi (-0.96 < -cos 0.5 = -0.878):
    #   fallback -0.96 - m sin m
    f = torch.tensor([[3.0, 4.0], [-0.96, 0.28]])
    plain = head(f)
    expected_plain = [[s * 0.6, s * 0.8, -s * 0.6], [-s * 0.96, s * 0.28, s * 0.96]]
    assert plain.tolist() == [[approx(v) for v in row] for row in expected_plain]
    logits = head(f, torch.tensor([0, 0]))
    t0 = 0.6 * math.cos(m) - 0.8 * math.sin(m)
    assert t0 == pytest.approx(math.cos(math.acos(0.6) + m))
    t1 = -0.96 - m * math.sin(m)
    expected = [[s * t0, s * 0.8, -s * 0.6], [s * t1, s * 0.28, s * 0.96]]
    assert logits.tolist() == [[approx(v) for v in row] for row in expected]


def test_arcface_margin_changes_only_the_target_logit_and_gradients_flow():
    g = torch.Generator().manual_seed(1)
    head = ArcFace(8, 5, margin=0.3, scale=16.0)
    f = torch.randn(10, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 5, (10,), generator=g)
    with_margin, plain = head(f, labels), head(f)
    target = torch.nn.functional.one_hot(labels, 5).bool()
    assert torch.equal(with_margin[~target], plain[~target])
    assert (with_margin[target] < plain[target]).all()
    torch.nn.functional.cross_entropy(with_margin, labels).backward()
    assert f.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0


def test_arcface_target_logit_decreases_with_the_angle():
    head = _arcface(margin=0.5, scale=1.0)
    theta = torch.linspace(0, math.pi, 721)
    f = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    target = head(f, torch.zeros(721, dtype=torch.long))[:, 0]
    assert (target[1:] <= target[:-1] + 1e-6).all()


def test_arcface_rejects_bad_labels_and_settings():
    head = _arcface()
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        head(torch.ones(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="margin"):
        ArcFace(2, 3, margin=2.0, scale=1.0)


# ----------------------------------------------------------------------------------------------- infonce


def _infonce_by_hand() -> float:
    # a = (1,0), (0,1); b = (1,0), (0.6,0.8); scale 2 -> logits [[2, 1.2], [0, 1.6]]
    a_to_b = (math.log(1 + math.exp(-0.8)) + math.log(1 + math.exp(-1.6))) / 2  # rows
    b_to_a = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-0.4))) / 2  # columns
    return (a_to_b + b_to_a) / 2


A = torch.tensor([[5.0, 0.0], [0.0, 1.0]])
B = torch.tensor([[1.0, 0.0], [1.2, 1.6]])


def test_info_nce_by_hand():
    assert float(info_nce(A, B, 2.0)) == approx(_infonce_by_hand())


def test_info_nce_leaves_pairs_marked_same_out_of_the_negatives():
    # three shapes, the first two captioned by one class prompt: logits (scale 1) = cos
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    cos = a @ b.T  # rows: a, columns: b (b is unit length already)
    rows = [-(cos[i, i] - torch.logsumexp(cos[i][~same[i] | (torch.arange(3) == i)], 0)) for i in range(3)]
    cols = [-(cos[i, i] - torch.logsumexp(cos[:, i][~same[:, i] | (torch.arange(3) == i)], 0)) for i in range(3)]
    expected = (torch.stack(rows).mean() + torch.stack(cols).mean()) / 2
    assert float(info_nce(a, b, 1.0, same)) == approx(float(expected))
    # identical texts are no longer pushed apart: the masked loss is lower than the unmasked one here
    assert float(info_nce(a, b, 1.0, same)) < float(info_nce(a, b, 1.0))
    # a diagonal-only mask changes nothing
    assert float(info_nce(A, B, 2.0, torch.eye(2, dtype=torch.bool))) == approx(_infonce_by_hand())
    with pytest.raises(ValueError, match=r"same must be \(2, 2\)"):
        info_nce(A, B, 2.0, torch.ones(3, 3, dtype=torch.bool))


def test_symmetric_infonce_learns_its_temperature():
    loss_fn = SymmetricInfoNCE(init_temperature=0.5)
    a = A.clone().requires_grad_(True)
    loss, logs = loss_fn(a, B)
    assert loss.item() == approx(_infonce_by_hand())
    assert logs["temperature"] == approx(0.5) and logs["loss"] == approx(_infonce_by_hand())
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    loss.backward()
    assert a.grad.abs().sum() > 0 and loss_fn.logit_scale.grad is not None
    opt.step()
    loss_fn.after_step()
    # the positives are the most similar pairs here, so a sharper softmax lowers the loss: T must go down
    assert loss_fn.temperature < 0.5


def test_symmetric_infonce_scale_is_clamped():
    loss_fn = SymmetricInfoNCE(init_temperature=0.07, max_scale=100.0)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(1000.0))
    loss, logs = loss_fn(A, B)
    assert loss.item() == approx(float(info_nce(A, B, 100.0)))
    assert logs["temperature"] == approx(0.01)
    loss_fn.after_step()
    assert loss_fn.logit_scale.item() == approx(math.log(100.0))
    with pytest.raises(ValueError, match="max_scale"):
        SymmetricInfoNCE(init_temperature=0.001, max_scale=100.0)


def test_losses_stay_float32_inside_bf16_autocast():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    head = ArcFace(16, 3, margin=0.3, scale=30.0)
    losses = {
        "triplet": lambda: triplet_loss(x, y, x.flip(0), margin=0.1)[0],
        "batch_hard": lambda: batch_hard_triplet_loss(x, labels, margin=0.1)[0],
        "supcon": lambda: supcon_loss(x, labels, temperature=0.05),
        "arcface": lambda: head(x, labels),
        "infonce": lambda: info_nce(x, y, 100.0),
    }
    for name, fn in losses.items():
        reference = fn().detach()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_amp = fn().detach()
        assert under_amp.dtype == torch.float32, name
        torch.testing.assert_close(under_amp, reference, rtol=0, atol=1e-6, msg=name)
