"""NEPA objective: target selection, content vs full targets, dual mask wiring, and overfitting a tiny batch."""

from __future__ import annotations

import pytest
import torch

from overfit import overfit, seeded, single_thread, tiny_encoder  # noqa: F401 (single_thread: autouse fixture)
from pipeline3d.models.token_types import A_POINT, A_RAY, BOS, EOS, MISSING_RAY, PAD, POINT, Q_POINT, Q_RAY, RAY
from pipeline3d.objectives import build_objective
from pipeline3d.objectives.nepa import nepa_target_mask
from synthetic_tokens import make_batch, n_positions


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_target_mask_legacy_scores_points_rays_and_eos_never_bos_pad_missing():
    t = torch.tensor([[BOS, POINT, POINT, RAY, MISSING_RAY, EOS, PAD]])
    v = t != PAD
    assert nepa_target_mask(t, v, qa_answers_only=True).tolist() == [[0, 1, 1, 1, 0, 1, 0]]


def test_target_mask_qa_scores_answers_only_per_sample():
    qa = [BOS, Q_POINT, A_POINT, Q_RAY, A_RAY, EOS, PAD]
    legacy = [BOS, POINT, POINT, RAY, RAY, RAY, EOS]
    t = torch.tensor([qa, legacy])
    v = t != PAD
    keep = nepa_target_mask(t, v, qa_answers_only=True)
    assert keep.tolist() == [[0, 0, 1, 0, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]]
    everything = nepa_target_mask(t, v, qa_answers_only=False)
    assert everything[0].tolist() == [0, 1, 1, 1, 1, 1, 0]


def _nepa(np_, nr, qa=False, **cfg):
    enc = tiny_encoder(n_positions(np_, nr, qa))
    return seeded(1, lambda: build_objective("nepa", enc, cfg))


@pytest.mark.parametrize("target", ["content", "full"])
def test_loss_is_one_minus_cosine_of_the_shifted_prediction(target):
    b = make_batch(2, 5, 3, seed=1)
    obj = _nepa(5, 3, target=target).eval()
    loss, logs = obj(b, step=0, total_steps=10, generator=gen())
    with torch.no_grad():
        enc = obj.encoder
        out = enc(b["feat"], b["type_id"], b["pos"], b["valid"], causal=True)
        pred = obj.pred_head(out.h)
        # content: MLP(feat) + type only (spec §10.8 fix); full: the reference's input embedding with positions
        goal = enc.embed(b["feat"], b["type_id"], b["pos"], content_only=True) if target == "content" else out.z
        terms = []
        for s in range(2):
            for i in range(b["feat"].shape[1] - 1):
                if int(b["type_id"][s, i + 1]) in (POINT, RAY, EOS):
                    terms.append(1 - torch.cosine_similarity(pred[s, i], goal[s, i + 1], dim=0))
    assert loss.item() == pytest.approx(float(torch.stack(terms).mean()), rel=1e-5)
    assert logs["n_targets"] == len(terms)
    assert 0.0 < logs["target_coherence"] <= 1.0


@pytest.mark.parametrize("target", ["content", "full"])
def test_target_is_stop_gradient(target):
    b = make_batch(2, 5, 3, seed=2)
    obj = _nepa(5, 3, target=target).eval()
    keep = nepa_target_mask(b["type_id"], b["valid"], qa_answers_only=True)[:, 1:]

    def manual_grad(detach: bool) -> torch.Tensor:
        obj.zero_grad()
        out = obj.encoder(b["feat"], b["type_id"], b["pos"], b["valid"], causal=True)
        goal = obj.encoder.embed(b["feat"], b["type_id"], b["pos"], content_only=target == "content")
        goal = goal.detach() if detach else goal
        cos = torch.cosine_similarity(obj.pred_head(out.h)[:, :-1][keep], goal[:, 1:][keep], dim=-1)
        (1 - cos).mean().backward()
        return obj.encoder.token_mlp[0].weight.grad.clone()

    with_stop, without = manual_grad(True), manual_grad(False)
    obj.zero_grad()
    obj(b, step=0, total_steps=1, generator=gen())[0].backward()
    torch.testing.assert_close(obj.encoder.token_mlp[0].weight.grad, with_stop)
    assert not torch.allclose(with_stop, without)


def test_dual_mask_changes_the_loss_only_in_training_and_after_warmup():
    b = make_batch(2, 8, 6, seed=3)
    obj = _nepa(8, 6, dual_mask_near=0.8, dual_mask_far=0.8, dual_mask_window=2, dual_mask_warmup_frac=0.5)
    ref = _nepa(8, 6)
    ref.load_state_dict(obj.state_dict())
    ref.eval()
    base, _ = ref(b, step=50, total_steps=100, generator=gen())
    obj.train()
    at0, logs0 = obj(b, step=0, total_steps=100, generator=gen())  # ramp = 0: no extra blocking
    assert at0.item() == pytest.approx(base.item(), rel=1e-6) and "blocked_frac" not in logs0
    later, logs = obj(b, step=50, total_steps=100, generator=gen())
    assert logs["p_near"] == pytest.approx(0.8) and logs["blocked_frac"] > 0.1
    assert later.item() != pytest.approx(base.item(), rel=1e-4)
    obj.eval()
    assert obj(b, step=50, total_steps=100, generator=gen())[0].item() == pytest.approx(base.item(), rel=1e-6)


def test_bad_target_is_refused():
    with pytest.raises(ValueError, match="content"):
        _nepa(2, 2, target="zz")


@pytest.mark.parametrize("qa", [False, True], ids=["legacy", "qa"])
def test_overfits_a_tiny_batch(qa):
    b = make_batch(4, 6, 4, qa=qa, no_ray_samples=(3,), seed=4)
    obj = _nepa(6, 4, qa=qa, dual_mask_near=0.2, dual_mask_far=0.1, dual_mask_window=4, dual_mask_warmup_frac=0.1)
    losses = overfit(obj, b, steps=50, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0], losses
