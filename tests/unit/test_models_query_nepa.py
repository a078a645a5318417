"""QueryNepa: causal/bidirectional attention, padding, per-sample extra blocks, embeddings, layers and pooling."""

from __future__ import annotations

import pytest
import torch

from overfit import single_thread, tiny_encoder  # noqa: F401 (single_thread: autouse fixture)
from pipeline3d.models import EncoderOutput, attention_mask
from pipeline3d.models.token_types import EOS, PAD
from synthetic_tokens import make_batch, n_positions

NP, NR = 6, 5


@pytest.fixture(scope="module")
def enc():
    return tiny_encoder(n_positions(NP, NR)).eval()


@pytest.fixture(scope="module")
def batch():
    return make_batch(3, NP, NR, no_ray_samples=(1,), seed=3)


def run(enc, b, **kw):
    return enc(b["feat"], b["type_id"], b["pos"], b["valid"], **kw)


def test_output_shapes_and_finite(enc, batch):
    out = run(enc, batch, causal=True)
    B, T, _ = batch["feat"].shape
    assert isinstance(out, EncoderOutput)
    assert out.z.shape == out.h.shape == (B, T, 32) and out.layers == {}
    assert torch.isfinite(out.h).all()  # includes PAD query rows: they attend to themselves, never to nothing


def test_causal_output_ignores_later_tokens(enc, batch):
    i = 7
    changed = {k: v.clone() for k, v in batch.items()}
    changed["feat"][:, i + 1 :] = torch.randn_like(changed["feat"][:, i + 1 :]) * 3
    a, b = run(enc, batch, causal=True), run(enc, changed, causal=True)
    torch.testing.assert_close(a.h[:, : i + 1], b.h[:, : i + 1])
    assert not torch.allclose(a.h[0, i + 1 :], b.h[0, i + 1 :])


def test_bidirectional_output_sees_later_tokens(enc, batch):
    changed = {k: v.clone() for k, v in batch.items()}
    changed["feat"][:, -3:] += 1.0
    a, b = run(enc, batch, causal=False), run(enc, changed, causal=False)
    assert (a.h[0, 0] - b.h[0, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("causal", [True, False])
def test_padding_does_not_change_valid_tokens(enc, batch, causal):
    padded = run(enc, batch, causal=causal)
    n = int(batch["valid"][1].sum())
    assert n < batch["valid"].shape[1]  # sample 1 (no rays) really is padded
    single = {k: batch[k][1:2, :n] for k in ("feat", "type_id", "pos", "valid")}
    alone = run(enc, single, causal=causal)
    torch.testing.assert_close(padded.h[1, :n], alone.h[0], rtol=1e-5, atol=1e-5)
    # and PAD tokens' garbage features cannot leak into valid tokens either
    noisy = {k: v.clone() for k, v in batch.items()}
    noisy["feat"][1, n:] = 5.0
    torch.testing.assert_close(run(enc, noisy, causal=causal).h[1, :n], padded.h[1, :n])


def test_extra_block_is_per_sample(enc, batch):
    B, T = batch["valid"].shape
    extra = torch.zeros(B, T, T, dtype=torch.bool)
    extra[0, 5, :5] = True  # token 5 of sample 0 may only look at itself
    a, b = run(enc, batch, causal=True), run(enc, batch, causal=True, extra_block=extra)
    assert not torch.allclose(a.h[0, 5], b.h[0, 5])
    torch.testing.assert_close(a.h[1:], b.h[1:])  # the other samples are untouched
    torch.testing.assert_close(a.h[0, :5], b.h[0, :5])


def test_attention_mask_keeps_the_diagonal_and_blocks_pad_keys():
    valid = torch.tensor([[True, True, False]])
    extra = torch.ones(1, 3, 3, dtype=torch.bool)  # try to block everything
    m = attention_mask(valid, causal=True, extra_block=extra)[:, 0]
    assert torch.equal(m[0], torch.eye(3, dtype=torch.bool))
    m = attention_mask(valid, causal=False)[:, 0]
    assert torch.equal(m[0], torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool))
    assert attention_mask(torch.ones(2, 4, dtype=torch.bool), causal=False) is None


def test_embed_content_only_drops_exactly_the_position_part(enc, batch):
    f, t, p = batch["feat"], batch["type_id"], batch["pos"]
    full, content = enc.embed(f, t, p), enc.embed(f, t, p, content_only=True)
    torch.testing.assert_close(full - content, enc.pos_emb(p))
    torch.testing.assert_close(run(enc, batch, causal=True).z, full)
    # content-only embeddings are equal for equal tokens at different positions
    moved = enc.embed(f, t, torch.flip(p, dims=[1]), content_only=True)
    torch.testing.assert_close(moved, content)


def test_position_out_of_range_is_a_clear_error(enc, batch):
    bad = dict(batch, pos=batch["pos"] + enc.n_positions)
    with pytest.raises(ValueError, match="n_positions"):
        run(enc, bad, causal=True)


def test_wrong_feature_width_is_a_clear_error(enc, batch):
    with pytest.raises(ValueError, match="15"):
        enc.embed(batch["feat"][..., :14], batch["type_id"], batch["pos"])


def test_return_layers(enc, batch):
    out = run(enc, batch, causal=True, return_layers=(0, 1, 2))
    assert sorted(out.layers) == [0, 1, 2]
    torch.testing.assert_close(out.layers[0], out.z)
    torch.testing.assert_close(enc.norm(out.layers[2]), out.h)  # last depth + final norm = h
    with pytest.raises(ValueError, match="0..2"):
        run(enc, batch, causal=True, return_layers=(3,))


def test_pool_eos_reads_the_eos_token_of_each_sample(enc, batch):
    out = run(enc, batch, causal=True)
    pooled = enc.pool(out, batch, "eos")
    for b in range(batch["feat"].shape[0]):
        eos = int((batch["type_id"][b] == EOS).nonzero())
        torch.testing.assert_close(pooled[b], out.h[b, eos])
    assert (batch["type_id"][1] == PAD).any()  # the padded sample's EOS is not its last row


def test_pool_mean_averages_content_tokens_only(enc, batch):
    out = run(enc, batch, causal=False)
    pooled = enc.pool(out, batch, "mean")
    keep = (batch["type_id"] >= 1) & (batch["type_id"] <= 8) & (batch["type_id"] != EOS) & batch["valid"]
    for b in range(batch["feat"].shape[0]):
        torch.testing.assert_close(pooled[b], out.h[b][keep[b]].mean(0))
    with pytest.raises(ValueError, match="pooling"):
        enc.pool(out, batch, "cls")


def test_gradients_flow_and_pad_rows_stay_finite(batch):
    enc = tiny_encoder(n_positions(NP, NR)).train()
    out = run(enc, batch, causal=True)
    out.h[batch["valid"]].pow(2).mean().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_deterministic_on_cpu(batch):
    a = run(tiny_encoder(n_positions(NP, NR), seed=5), batch, causal=True).h
    b = run(tiny_encoder(n_positions(NP, NR), seed=5), batch, causal=True).h
    assert torch.equal(a, b)
