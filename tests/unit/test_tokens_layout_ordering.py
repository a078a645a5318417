"""Token layout (config, positions) and orderings (Morton curve for points, direction order for rays)."""

import numpy as np
import pytest

from pipeline3d.tokens import layout as L
from pipeline3d.tokens.layout import TokenConfig, eos_position, max_tokens, n_positions
from pipeline3d.tokens.ordering import morton_order, ray_direction_order
from tokens_fixtures import naive_morton


def test_config_parsing_and_validation():
    cfg = TokenConfig.of({"n_point": 4, "n_ray": 3, "qa_tokens": True, "extra_key": 1})
    assert (cfg.add_eos, cfg.drop_ray_prob, cfg.eval_seed) == (True, 0.0, 0)
    assert (cfg.point_segment, cfg.ray_segment) == (8, 6)
    assert TokenConfig.of(cfg) is cfg
    with pytest.raises(ValueError, match="n_ray"):
        TokenConfig.of({"n_point": 4})
    with pytest.raises(ValueError, match=">= 0"):
        TokenConfig(n_point=-1, n_ray=0)
    with pytest.raises(ValueError, match="drop_ray_prob"):
        TokenConfig(n_point=1, n_ray=1, drop_ray_prob=1.5)


@pytest.mark.parametrize("qa, expected", [(False, 2 + 256 + 256), (True, 2 + 512 + 512)])
def test_position_table_size(qa, expected):
    cfg = {"n_point": 256, "n_ray": 256, "qa_tokens": qa}
    assert n_positions(cfg) == expected
    assert eos_position(cfg) == expected - 1
    assert max_tokens(cfg) == expected
    assert max_tokens({**cfg, "add_eos": False}) == expected - 1


def test_type_ids_are_the_contract():
    assert (L.BOS, L.POINT, L.RAY, L.MISSING_RAY, L.EOS, L.Q_POINT, L.A_POINT, L.Q_RAY, L.A_RAY, L.PAD) == tuple(
        range(10)
    )
    assert L.N_TYPES == 10 and L.FEAT_DIM == 15 and len(L.TYPE_NAMES) == 10


def test_morton_order_sorts_by_the_interleaved_code():
    points = np.random.default_rng(0).uniform(-1, 1, size=(3000, 3))
    order = morton_order(points)
    assert sorted(order.tolist()) == list(range(3000))
    assert np.all(np.diff(naive_morton(points)[order]) >= 0)


def test_morton_interleaves_x_lowest_then_y_then_z():
    def at(cells):
        return -1.0 + 2.0 * (np.asarray(cells, dtype=np.float64) + 0.5) / 1024

    # codes: (1,0,0)=1, (0,1,0)=2, (1,1,0)=3, (0,0,1)=4, (0,0,0)=0, (2,0,0)=8
    cells = [(0, 0, 1), (1, 1, 0), (2, 0, 0), (0, 1, 0), (1, 0, 0), (0, 0, 0)]
    order = morton_order(at(cells))
    assert [cells[i] for i in order] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (2, 0, 0)]


def test_rays_sorted_by_azimuth_then_polar_angle():
    rng = np.random.default_rng(1)
    # axis-aligned azimuths (one of d_x, d_y exactly 0) tie exactly, so the polar angle must break the ties
    axis = rng.integers(0, 4, size=200)
    polar = rng.uniform(0.1, 3.0, size=200)
    ring = np.sin(polar)
    dirs = np.zeros((200, 3))
    dirs[:, 0] = np.choose(axis, [ring, 0 * ring, -ring, 0 * ring])
    dirs[:, 1] = np.choose(axis, [0 * ring, ring, 0 * ring, -ring])
    dirs[:, 2] = np.cos(polar)
    order = ray_direction_order(dirs)
    az, po = np.arctan2(dirs[order, 1], dirs[order, 0]), np.arccos(dirs[order, 2])
    assert np.all(np.diff(az) >= 0)
    same = np.diff(az) == 0
    assert same.sum() == 196 and np.all(np.diff(po)[same] >= 0)
    # azimuth is the primary key: a large polar angle at a small azimuth still comes first
    two = np.array(
        [
            [np.sin(3.0) * np.cos(0.5), np.sin(3.0) * np.sin(0.5), np.cos(3.0)],
            [np.sin(0.2) * np.cos(0.1), np.sin(0.2) * np.sin(0.1), np.cos(0.2)],
        ]
    )
    assert ray_direction_order(two).tolist() == [1, 0]
