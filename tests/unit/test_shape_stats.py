"""The shape-statistics pretraining target (objectives.shape_stats) and cmae's term that predicts it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from overfit import overfit, seeded, single_thread  # noqa: F401 (single_thread: autouse fixture)
from patch_fixtures import CFG, cloud, patch_batch, tiny_patch_encoder
from pipeline3d.eval.descriptor import shape_distribution
from pipeline3d.models import create_encoder
from pipeline3d.objectives import build_objective
from pipeline3d.objectives.shape_stats import patch_points, shape_statistics, statistics_loss, statistics_width

BINS = 32


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_patch_points_are_the_points_the_tokens_were_made_from():
    batch = patch_batch(2)
    pts = patch_points(batch, CFG.group_size, CFG.point_dim)
    assert pts.shape == (2, CFG.groups * CFG.group_size, 3)
    # a patch's first point is its centre (FPS centres are input points, nearest first in their group)
    centres = batch["feat"][:, 1:-1, -3:]
    assert torch.allclose(pts.view(2, CFG.groups, CFG.group_size, 3)[:, :, 0], centres, atol=1e-6)


def test_statistics_agree_with_the_descriptor_floor():
    pts = np.asarray(cloud(3, n=400, kind="rod") * np.array([1.0, 2.0, 0.5]), dtype=np.float32)
    ours = shape_statistics(torch.from_numpy(pts)[None], _generator(), bins=BINS, n_pairs=200_000, n_triples=200_000)
    ref = shape_distribution(
        pts, np.random.default_rng(0), n_points=0, bins=BINS, n_pairs=200_000, n_triples=200_000, d3=False
    )
    d2, a3, radial, eigen = ref[:BINS], ref[BINS : 2 * BINS], ref[2 * BINS : 3 * BINS], ref[3 * BINS :]
    # radial and eigenvalues read every point: equal; D2 / A3 are drawn (other draws): close
    assert np.allclose(ours["radial"][0].numpy(), radial, atol=1e-6)
    assert np.allclose(ours["eigen"][0].numpy(), eigen, atol=1e-5)
    assert np.abs(ours["d2"][0].numpy() - d2).max() < 0.01
    assert np.abs(ours["a3"][0].numpy() - a3).max() < 0.01
    for name in ("d2", "a3", "radial"):
        assert float(ours[name].sum()) == pytest.approx(1.0, abs=1e-5)


def test_statistics_ignore_the_scale_and_translation_of_the_augmentation():
    pts = torch.from_numpy(cloud(1, n=256, kind="cube")).float()[None]
    moved = pts * 1.7 + torch.tensor([0.3, -0.2, 0.1])
    a, b = shape_statistics(pts, _generator(5)), shape_statistics(moved, _generator(5))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def test_statistics_tell_shapes_apart_and_draws_come_from_the_generator():
    sphere, rod = (torch.from_numpy(cloud(0, n=256, kind=k)).float() for k in ("sphere", "rod"))
    stats = shape_statistics(torch.stack([sphere, rod]), _generator())
    assert (stats["d2"][0] - stats["d2"][1]).abs().sum() > 0.5
    assert stats["eigen"][1, 0] > 0.9 > stats["eigen"][0, 0]  # a rod's variance lies along one axis
    again = shape_statistics(torch.stack([sphere, rod]), _generator())
    other = shape_statistics(torch.stack([sphere, rod]), _generator(1))
    assert all(torch.equal(stats[k], again[k]) for k in stats)
    assert not torch.equal(stats["a3"], other["a3"])


def test_statistics_loss_is_zero_for_a_perfect_prediction_and_positive_otherwise():
    stats = shape_statistics(patch_points(patch_batch(3), CFG.group_size, CFG.point_dim), _generator())
    logits = torch.cat([torch.log(stats[k].clamp_min(1e-12)) for k in ("d2", "a3", "radial")] + [stats["eigen"]], 1)
    assert logits.shape[1] == statistics_width(BINS)
    assert float(statistics_loss(logits, stats, BINS)) == pytest.approx(0.0, abs=1e-5)
    assert float(statistics_loss(torch.zeros_like(logits), stats, BINS)) > 0.1


def test_cmae_statistics_term_alone_learns_the_targets_on_a_tiny_set():
    knobs = {"lambda_stats": 1.0, "lambda_feat": 0.0, "lambda_nce": 0.0, "lambda_view": 0.0, "lambda_occ": 0.0}
    obj = seeded(1, lambda: build_objective("cmae", tiny_patch_encoder(), knobs))
    losses = overfit(obj, patch_batch(), steps=60, lr=3e-3, mask_seed=0)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses[::10]


def test_cmae_statistics_term_needs_patch_tokens():
    with pytest.raises(ValueError, match="point-patch encoder"):
        build_objective("cmae", create_encoder("query_nepa_tiny", n_positions=8), {"lambda_stats": 1.0})
