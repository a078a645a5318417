"""Point patches: FPS / grouping invariants, the token layout, augmentation draws, the patch encoder and the
objectives that run on it (each loss falls on a tiny overfit set)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from overfit import overfit, seeded, single_thread  # noqa: F401 (single_thread: autouse fixture)
from patch_fixtures import CFG, cloud, patch_batch, tiny_patch_encoder
from pipeline3d.models import create_encoder
from pipeline3d.models.query_nepa import pool_tokens
from pipeline3d.objectives import build_objective
from pipeline3d.objectives.masks import sample_token_mask
from pipeline3d.tokens.augment import AugmentConfig, augment_points, augment_tokens, uniform_rotation
from pipeline3d.tokens.layout import BOS, EOS, POINT
from pipeline3d.tokens.patches import (
    PatchConfig,
    draw_points,
    farthest_point_sample,
    knn_groups,
    patchify,
    split_patch_feat,
)
from pipeline3d.tokens.tokenizer import tokenize


def test_fps_centres_are_input_points_each_farthest_from_those_chosen():
    pts = cloud(0)
    idx = farthest_point_sample(pts, 20, start=5)
    assert idx[0] == 5 and len(set(idx.tolist())) == 20
    for i in range(1, len(idx)):
        d_to_chosen = ((pts[:, None] - pts[idx[:i]][None]) ** 2).sum(-1).min(axis=1)
        assert d_to_chosen[idx[i]] == pytest.approx(d_to_chosen.max())


def test_groups_are_the_true_k_nearest_points_nearest_first():
    pts = cloud(1)
    centres = pts[farthest_point_sample(pts, 10)]
    groups = knn_groups(pts, centres, 12)
    d2 = ((centres[:, None] - pts[None]) ** 2).sum(-1)
    for g in range(len(centres)):
        assert set(groups[g].tolist()) == set(np.argsort(d2[g], kind="stable")[:12].tolist())
        assert np.all(np.diff(d2[g, groups[g]]) >= 0)
        assert groups[g, 0] == np.argmin(d2[g])  # the centre itself


def test_knn_ties_go_to_the_lower_index():
    pts = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [2, 0, 0]], dtype=float)
    assert knn_groups(pts, pts[:1], 3).tolist() == [[0, 1, 2]]


def test_patch_tokens_layout_and_content():
    pts = cloud(2)
    rng = np.random.default_rng(3)
    xyz, _ = draw_points(pts, None, CFG.points, rng)
    feat, type_id, pos = patchify(xyz, None, CFG, rng)
    assert feat.shape == (CFG.n_tokens, CFG.feat_dim) and feat.dtype == np.float32
    assert type_id[0] == BOS and type_id[-1] == EOS and (type_id[1:-1] == POINT).all()
    assert pos.tolist() == list(range(CFG.n_tokens))
    assert not feat[0].any() and not feat[-1].any()
    patch, centre = split_patch_feat(feat[1:-1], CFG)
    # every patch point is a drawn point; the first point of each patch is its centre (relative zero)
    absolute = patch + centre[:, None, :]
    drawn = {tuple(np.round(p, 5)) for p in xyz.astype(np.float32)}
    assert all(tuple(np.round(p, 5)) in drawn for p in absolute.reshape(-1, 3))
    assert np.abs(patch[:, 0]).max() < 1e-6


def test_patch_tokens_with_normals_carry_them_after_xyz():
    cfg = PatchConfig(points=128, groups=8, group_size=4, normals=True)
    pts = cloud(4)
    normals = pts.copy()  # unit sphere: the normal is the point
    rng = np.random.default_rng(0)
    xyz, nrm = draw_points(pts, normals, cfg.points, rng)
    feat, _, _ = patchify(xyz, nrm, cfg, rng)
    patch, centre = split_patch_feat(feat[1:-1], cfg)
    np.testing.assert_allclose(patch[..., 3:], patch[..., :3] + centre[:, None], atol=1e-5)


def test_patch_draws_are_reproducible_and_differ_between_keys():
    pts = cloud(5)

    def tokens(seed):
        rng = np.random.default_rng(seed)
        xyz, _ = draw_points(pts, None, CFG.points, rng)
        xyz, _ = augment_points(xyz, None, AugmentConfig(enabled=True, dropout=0.2), rng)
        return patchify(xyz, None, CFG, rng)[0]

    assert tokens(1).tobytes() == tokens(1).tobytes()
    assert tokens(1).tobytes() != tokens(2).tobytes()


def test_augmentation_is_off_unless_enabled_and_moves_points_when_on():
    pts = cloud(6)
    rng = np.random.default_rng(0)
    same, _ = augment_points(pts, None, AugmentConfig(), rng)
    assert same is pts
    moved, _ = augment_points(pts, None, AugmentConfig(enabled=True, jitter_sigma=0.0), np.random.default_rng(1))
    assert not np.allclose(moved, pts)
    # a rotation about y alone keeps y and the distance to the y axis
    rot, _ = augment_points(
        pts, None, AugmentConfig(enabled=True, scale=(1, 1), translate=0, jitter_sigma=0), np.random.default_rng(2)
    )
    np.testing.assert_allclose(rot[:, 1], pts[:, 1], atol=1e-12)
    np.testing.assert_allclose(np.hypot(rot[:, 0], rot[:, 2]), np.hypot(pts[:, 0], pts[:, 2]), atol=1e-12)


def test_any_rotation_is_rigid_reproducible_and_turns_every_axis():
    pts = cloud(8)
    cfg = AugmentConfig(enabled=True, scale=(1, 1), translate=0, jitter_sigma=0, rotate_any=True)
    out, _ = augment_points(pts, None, cfg, np.random.default_rng(4))
    again, _ = augment_points(pts, None, cfg, np.random.default_rng(4))
    assert np.array_equal(out, again)
    gram = lambda p: p @ p.T  # noqa: E731 (a rotation keeps every dot product)
    np.testing.assert_allclose(gram(out), gram(pts), atol=1e-10)
    assert not any(np.allclose(out[:, a], pts[:, a]) for a in range(3))  # not a rotation about one axis
    rots = np.stack([uniform_rotation(np.random.default_rng(s)) for s in range(2000)])
    np.testing.assert_allclose(np.linalg.det(rots), 1.0, atol=1e-12)
    # uniform on SO(3): where the up axis lands is uniform on the sphere (mean ~0, each coordinate^2 ~ 1/3)
    up = rots[:, :, 1]
    assert np.abs(up.mean(axis=0)).max() < 0.05 and np.abs((up**2).mean(axis=0) - 1 / 3).max() < 0.03


def test_query_token_augmentation_keeps_distances_consistent_with_positions():
    xyz = cloud(7, 64)
    pools = {"pt_xyz": xyz.astype(np.float32), "pt_dist": np.linalg.norm(xyz, axis=1).astype(np.float32)}
    feat, type_id, _ = tokenize(pools, {"n_point": 16, "n_ray": 0, "qa_tokens": False}, np.random.default_rng(0))
    cfg = AugmentConfig(enabled=True, translate=0.0)  # rotation + isotropic scale: distances to the origin scale
    out = augment_tokens(feat, type_id, cfg, np.random.default_rng(3))
    pts = type_id == POINT
    np.testing.assert_allclose(np.linalg.norm(out[pts, 0:3], axis=1), out[pts, 10], rtol=1e-5)
    assert not out[0].any()  # BOS stays empty


def test_patch_encoder_masking_keeps_centres_and_special_tokens_get_no_patch_embedding():
    enc = tiny_patch_encoder()
    b = patch_batch(2)
    mask = torch.zeros(b["type_id"].shape, dtype=torch.bool)
    mask[:, 2] = True
    masked = enc.mask_content(b["feat"], mask)
    assert masked[:, 2, :-3].abs().sum() == 0 and torch.equal(masked[:, 2, -3:], b["feat"][:, 2, -3:])
    assert torch.equal(masked[:, 3], b["feat"][:, 3])
    z = enc.embed(b["feat"], b["type_id"], b["pos"])
    assert torch.allclose(z[:, 0], enc.type_emb.weight[BOS].expand_as(z[:, 0]))


def test_meanmax_pool_concatenates_mean_and_max_of_content_tokens():
    b = patch_batch(2)
    h = torch.randn(*b["type_id"].shape, 4)
    pooled = pool_tokens(h, b, "meanmax")
    content = h[:, 1:-1]
    assert torch.allclose(pooled, torch.cat([content.mean(1), content.amax(1)], dim=1))


# cmae's token InfoNCE has a high floor here: the patches of six spheres/cubes/rods are near-copies of each other,
# so many negatives are indistinguishable from the positive; it still has to fall by a third
@pytest.mark.parametrize(
    "name,cfg,ratio",
    [
        ("point_mae", {}, 0.5),
        ("nepa", {}, 0.5),
        ("mae", {}, 0.5),
        ("cmae", {"lambda_occ": 0, "lambda_view": 0, "ema_momentum": 0.9}, 0.7),
    ],
)
def test_each_objective_loss_falls_on_a_tiny_patch_set(name, cfg, ratio):
    obj = seeded(1, lambda: build_objective(name, tiny_patch_encoder(), cfg))
    losses = overfit(obj, patch_batch(), steps=60, lr=3e-3, mask_seed=0)
    assert sum(losses[-5:]) / 5 < ratio * losses[0], losses[::10]


def test_point_mae_encoder_sees_only_visible_patches_and_scores_masked_ones():
    obj = seeded(1, lambda: build_objective("point_mae", tiny_patch_encoder(), {"mask_ratio": 0.5}))
    b = patch_batch(3)
    seen = []
    run_blocks = obj.encoder.run_blocks
    obj.encoder.run_blocks = lambda z, valid, **kw: (seen.append(valid.clone()), run_blocks(z, valid, **kw))[1]
    _, logs = obj(b, step=0, total_steps=1, generator=torch.Generator().manual_seed(0))
    mask = sample_token_mask(b["type_id"], b["valid"], 0.5, torch.Generator().manual_seed(0))
    assert logs["n_masked"] == int(mask.sum()) == 3 * (CFG.groups // 2)
    assert seen[0].shape[1] == CFG.n_tokens - CFG.groups // 2  # visible patches + BOS + EOS


def test_point_mae_refuses_query_encoders():
    enc = create_encoder("query_nepa_tiny", n_positions=8)
    with pytest.raises(ValueError, match="point-patch encoder"):
        build_objective("point_mae", enc, {})


def test_classifier_fits_a_tiny_patch_set_with_meanmax_pool():
    obj = seeded(
        1,
        lambda: build_objective("classify", tiny_patch_encoder(), {"n_classes": 3, "pool": "meanmax", "causal": False}),
    )
    losses = overfit(obj, patch_batch(), steps=40, lr=3e-3)
    assert losses[-1] < 0.2 * losses[0]


def test_knn_ties_from_duplicate_points_keep_the_lower_index_in_every_row():
    pts = cloud(8, 200)
    pts[150:] = pts[0]  # point dropout's copies of the first point
    centres = pts[[0, 10, 20]]
    groups = knn_groups(pts, centres, 12)
    d2 = ((centres[:, None] - pts[None]) ** 2).sum(-1)
    for g in range(len(centres)):
        assert groups[g].tolist() == np.lexsort((np.arange(len(pts)), d2[g]))[:12].tolist()
