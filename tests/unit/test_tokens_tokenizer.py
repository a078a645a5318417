"""Tokenizer: sequence layout, slot contents (legacy and Q/A), orderings, fixed positions, sampling, ray dropout."""

import numpy as np
import pytest

from pipeline3d.tokens import layout as L
from pipeline3d.tokens.tokenizer import tokenize
from tokens_fixtures import naive_morton


def make_pools(n_pt=300, n_ray=200, seed=0, rays=True):
    rng = np.random.default_rng(seed)
    pools = {
        "pt_xyz": rng.uniform(-1, 1, (n_pt, 3)).astype(np.float32),
        "pt_dist": rng.uniform(0.01, 1, n_pt).astype(np.float32),
    }
    if rays:
        d = rng.normal(size=(n_ray, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        hit = (rng.random(n_ray) < 0.5).astype(np.uint8)
        n = rng.normal(size=(n_ray, 3))
        pools.update(
            ray_o=(-2.2 * d).astype(np.float32),
            ray_d=d.astype(np.float32),
            ray_hit=hit,
            ray_t=(rng.uniform(1.2, 3.2, n_ray) * hit).astype(np.float32),
            ray_n=n.astype(np.float32),
        )
    return pools


def cfg(**kw):
    return {"n_point": 16, "n_ray": 12, "qa_tokens": False, **kw}


def row_of(table: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each row of ``values`` in ``table`` (exact match)."""
    out = []
    for v in values:
        (idx,) = np.flatnonzero(np.all(table == v, axis=1))
        out.append(idx)
    return np.array(out)


def test_legacy_sequence_layout_and_contents():
    pools = make_pools()
    feat, type_id, pos = tokenize(pools, cfg(), np.random.default_rng(0))
    assert feat.dtype == np.float32 and type_id.dtype == np.int64 and pos.dtype == np.int64
    assert type_id.tolist() == [L.BOS] + [L.POINT] * 16 + [L.RAY] * 12 + [L.EOS]
    assert pos.tolist() == list(range(30))
    assert not feat[0].any() and not feat[-1].any()  # BOS/EOS are zero vectors
    pts = feat[1:17]
    idx = row_of(pools["pt_xyz"], pts[:, L.XYZ])
    assert len(set(idx.tolist())) == 16  # without replacement from a 300-point pool
    np.testing.assert_array_equal(pts[:, L.DIST], pools["pt_dist"][idx])
    assert not pts[:, 3:10].any() and not pts[:, 11:].any()
    rays = feat[17:29]
    r = row_of(pools["ray_d"], rays[:, L.RAY_DIR])
    hit = pools["ray_hit"][r].astype(np.float32)
    np.testing.assert_array_equal(rays[:, L.RAY_ORIGIN], pools["ray_o"][r])
    np.testing.assert_array_equal(rays[:, L.RAY_HIT], hit)
    np.testing.assert_array_equal(rays[:, L.RAY_T], pools["ray_t"][r] * hit)
    np.testing.assert_allclose(
        rays[:, L.XYZ], (pools["ray_o"][r] + pools["ray_t"][r, None] * pools["ray_d"][r]) * hit[:, None], rtol=1e-6
    )
    np.testing.assert_array_equal(rays[:, L.RAY_NORMAL], pools["ray_n"][r] * hit[:, None])
    assert 0 < hit.sum() < 12
    assert not rays[hit == 0][:, [0, 1, 2, 9, 11, 12, 13, 14]].any()  # a miss carries no surface
    assert not rays[:, L.DIST].any()


def test_qa_slots_hold_only_their_part():
    pools = make_pools()
    feat, type_id, pos = tokenize(pools, cfg(qa_tokens=True), np.random.default_rng(0))
    assert type_id.tolist() == [L.BOS] + [L.Q_POINT, L.A_POINT] * 16 + [L.Q_RAY, L.A_RAY] * 12 + [L.EOS]
    assert pos.tolist() == list(range(2 + 32 + 24))
    q_pt, a_pt = feat[1:33:2], feat[2:33:2]
    q_ray, a_ray = feat[33:57:2], feat[34:57:2]
    only = {"q_pt": [0, 1, 2], "a_pt": [10], "q_ray": [3, 4, 5, 6, 7, 8], "a_ray": [0, 1, 2, 9, 11, 12, 13, 14]}
    for name, block in (("q_pt", q_pt), ("a_pt", a_pt), ("q_ray", q_ray), ("a_ray", a_ray)):
        others = [s for s in range(15) if s not in only[name]]
        assert not block[:, others].any(), name
        assert block[:, only[name]].any(), name
    # each answer belongs to the query right before it
    idx = row_of(pools["pt_xyz"], q_pt[:, L.XYZ])
    np.testing.assert_array_equal(a_pt[:, L.DIST], pools["pt_dist"][idx])
    r = row_of(pools["ray_d"], q_ray[:, L.RAY_DIR])
    np.testing.assert_array_equal(a_ray[:, L.RAY_HIT], pools["ray_hit"][r])
    np.testing.assert_array_equal(a_ray[:, L.RAY_T], pools["ray_t"][r] * pools["ray_hit"][r])
    # the same draw as legacy mode (same generator): Q/A only changes the layout
    legacy, _, _ = tokenize(pools, cfg(), np.random.default_rng(0))
    np.testing.assert_array_equal(q_pt[:, L.XYZ], legacy[1:17, L.XYZ])


@pytest.mark.parametrize("qa", [False, True])
def test_points_follow_the_morton_curve_and_rays_the_direction_order(qa):
    pools = make_pools(n_pt=5000, n_ray=3000)
    c = cfg(n_point=400, n_ray=300, qa_tokens=qa)
    feat, type_id, _ = tokenize(pools, c, np.random.default_rng(3))
    pts = feat[type_id == (L.Q_POINT if qa else L.POINT), L.XYZ]
    assert np.all(np.diff(naive_morton(pts.astype(np.float64))) >= 0)
    d = feat[type_id == (L.Q_RAY if qa else L.RAY), L.RAY_DIR]
    az = np.arctan2(d[:, 1].astype(np.float64), d[:, 0].astype(np.float64))
    assert np.all(np.diff(az) >= 0)


@pytest.mark.parametrize("qa", [False, True])
def test_positions_do_not_depend_on_other_segments(qa):
    """EOS and point positions are the same with and without rays; no token is spent on missing rays."""
    c = cfg(qa_tokens=qa)
    per = 2 if qa else 1
    P, R = 16 * per, 12 * per
    with_rays = tokenize(make_pools(), c, np.random.default_rng(5))
    no_rays = tokenize(make_pools(rays=False), c, np.random.default_rng(5))
    zero_rays = tokenize(make_pools(), {**c, "n_ray": 0}, np.random.default_rng(5))
    for feat, type_id, pos in (with_rays, no_rays):
        assert pos[-1] == 1 + P + R and type_id[-1] == L.EOS
        assert pos[1 : 1 + P].tolist() == list(range(1, 1 + P))
    assert with_rays[2][1 + P : 1 + P + R].tolist() == list(range(1 + P, 1 + P + R))
    assert len(no_rays[1]) == 1 + P + 1  # BOS + points + EOS: nothing for the rays
    assert not np.isin(no_rays[1], [L.MISSING_RAY, L.PAD, L.RAY, L.Q_RAY, L.A_RAY]).any()
    np.testing.assert_array_equal(no_rays[0][: 1 + P], with_rays[0][: 1 + P])  # same points either way
    assert len(zero_rays[1]) == 1 + P + 1 and zero_rays[2][-1] == 1 + P  # n_ray = 0: R = 0


def test_no_eos_when_disabled():
    feat, type_id, pos = tokenize(make_pools(), cfg(add_eos=False), np.random.default_rng(0))
    assert len(type_id) == 1 + 16 + 12 and L.EOS not in type_id.tolist()


def test_sampling_without_replacement_when_possible():
    pools = make_pools(n_pt=16, n_ray=12)
    feat, type_id, _ = tokenize(pools, cfg(), np.random.default_rng(0))
    idx = row_of(pools["pt_xyz"], feat[type_id == L.POINT, L.XYZ])
    assert sorted(idx.tolist()) == list(range(16))  # the pool exactly once
    r = row_of(pools["ray_d"], feat[type_id == L.RAY, L.RAY_DIR])
    assert sorted(r.tolist()) == list(range(12))
    small = make_pools(n_pt=5, n_ray=3)
    feat, type_id, _ = tokenize(small, cfg(), np.random.default_rng(0))  # too small: with replacement
    assert (type_id == L.POINT).sum() == 16 and (type_id == L.RAY).sum() == 12
    assert set(row_of(small["pt_xyz"], feat[type_id == L.POINT, L.XYZ]).tolist()) <= set(range(5))


def test_same_generator_same_tokens_and_different_seed_different_tokens():
    pools = make_pools()
    a = tokenize(pools, cfg(), np.random.default_rng(7))
    b = tokenize(pools, cfg(), np.random.default_rng(7))
    c = tokenize(pools, cfg(), np.random.default_rng(8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_drop_ray_coin_only_in_train_mode():
    pools = make_pools()
    always = cfg(drop_ray_prob=1.0)
    _, type_id, pos = tokenize(pools, always, np.random.default_rng(0), train=True)
    assert L.RAY not in type_id.tolist() and pos[-1] == 1 + 16 + 12
    _, type_id, _ = tokenize(pools, always, np.random.default_rng(0), train=False)
    assert (type_id == L.RAY).sum() == 12  # evaluation never drops rays
    half = cfg(drop_ray_prob=0.5)
    dropped = [L.RAY not in tokenize(pools, half, np.random.default_rng(s), train=True)[1] for s in range(400)]
    assert 0.4 < np.mean(dropped) < 0.6
    # the coin is drawn after the points: a dropped sample keeps the points it would have had
    kept = tokenize(pools, cfg(), np.random.default_rng(1), train=True)[0]
    gone = tokenize(pools, always, np.random.default_rng(1), train=True)[0]
    np.testing.assert_array_equal(gone[:17], kept[:17])


def test_bad_pools_are_refused():
    with pytest.raises(ValueError, match="empty pool"):
        tokenize({"pt_xyz": np.zeros((0, 3)), "pt_dist": np.zeros(0)}, cfg(), np.random.default_rng(0))
    partial = make_pools()
    del partial["ray_n"]
    with pytest.raises(ValueError, match="ray_n"):
        tokenize(partial, cfg(), np.random.default_rng(0))


@pytest.mark.parametrize("qa", [False, True])
def test_fine_tune_keeps_the_pretrained_layout(qa):
    """Fewer points and no rays (fine-tuning) with the pretraining's capacities: EOS keeps its pretrained position."""
    pre = cfg(qa_tokens=qa)
    per = 2 if qa else 1
    fine = {**pre, "n_point": 8, "n_ray": 0, "layout_n_point": pre["n_point"], "layout_n_ray": pre["n_ray"]}
    _, type_id, pos = tokenize(make_pools(), fine, np.random.default_rng(1))
    assert len(type_id) == 1 + 8 * per + 1
    assert pos[-1] == L.eos_position(pre) == 1 + per * (16 + 12)
    assert pos[1 : 1 + 8 * per].tolist() == list(range(1, 1 + 8 * per))
    assert L.n_positions(fine) == L.n_positions(pre)
    with pytest.raises(ValueError, match="capacity"):
        L.TokenConfig.of({**fine, "n_point": 32})
