"""The hand-crafted descriptor floor: invariances, reproducibility, separability, the classifier's protocol (full-width
output, C chosen on validation only) and the job's metrics layout on a tiny real shard cache of surface points."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline3d.data.selection import cached_rows
from pipeline3d.eval import descriptor
from pipeline3d.eval.descriptor import descriptor_features, feature_length, fit_predict, select_c, shape_distribution
from pipeline3d.io.shards import ShardWriter, shard_of
from pipeline3d.jobs import descriptor as descriptor_job
from pipeline3d.rng import rng_for
from pipeline3d.tokens.backends import PointCloudNoRayBackend

FAST = {"n_points": 256, "n_pairs": 2048, "n_triples": 2048}
N_POINTS = 300  # rows of pc_xyz in the fixture shards (more than FAST's subsample)
PROFILE = {"pc_points": N_POINTS}  # the only cache-profile key a pc_xyz-only shard needs
LOG = logging.getLogger("test")


# ---- synthetic surfaces -----------------------------------------------------------------------------------------


def sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.normal(size=(n, 3))
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def cube(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.uniform(-1, 1, size=(n, 3))
    p[np.arange(n), rng.integers(0, 3, n)] = rng.choice([-1.0, 1.0], n)
    return p


def rod(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.column_stack([rng.uniform(-1, 1, n), 0.03 * rng.normal(size=(n, 2))])


SHAPES = (sphere, cube, rod)


def rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def noisy(kind: int, rng: np.random.Generator, n: int = N_POINTS) -> np.ndarray:
    """A randomly posed, scaled, noisy sample of a sphere / cube / rod surface."""
    points = SHAPES[kind](rng, n) + 0.02 * rng.normal(size=(n, 3))
    return (points @ rotation(rng).T) * rng.uniform(0.3, 3.0) + rng.normal(size=3)


# ---- features ---------------------------------------------------------------------------------------------------


def test_rigid_motion_and_uniform_scale_leave_the_descriptor_unchanged():
    rng = np.random.default_rng(0)
    points = cube(rng, 3000)
    base = shape_distribution(points, rng_for(0, "descriptor", "a"), n_points=1024)
    moved = (points @ rotation(rng).T) * 7.3 + np.array([5.0, -2.0, 0.5])
    again = shape_distribution(moved, rng_for(0, "descriptor", "a"), n_points=1024)
    assert base.dtype == np.float32 and base.shape == (feature_length(),)
    np.testing.assert_allclose(again, base, atol=1e-5)


def test_histograms_sum_to_one_and_the_layout_follows_the_knobs():
    vec = shape_distribution(
        sphere(np.random.default_rng(1), 500),
        rng_for(0, "descriptor", "s"),
        bins=8,
        d3=False,
        **{k: v for k, v in FAST.items() if k != "n_points"},
    )
    assert vec.shape == (feature_length(bins=8, d3=False),) == (3 * 8 + 5,)
    np.testing.assert_allclose(vec[:24].reshape(3, 8).sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(vec[24:27].sum(), 1.0, atol=1e-6)  # eigenvalues over their sum
    assert np.isfinite(shape_distribution(np.zeros((10, 3)), rng_for(0, "descriptor", "z"))).all()
    with pytest.raises(ValueError, match="N >= 3"):
        shape_distribution(np.zeros((2, 3)), rng_for(0, "descriptor", "z"))


def test_same_seed_and_id_give_identical_bytes_another_id_or_seed_other_draws():
    points = sphere(np.random.default_rng(2), 2000)
    one = shape_distribution(points, rng_for(4, "descriptor", "ds/x"), **FAST)
    assert one.tobytes() == shape_distribution(points, rng_for(4, "descriptor", "ds/x"), **FAST).tobytes()
    assert one.tobytes() != shape_distribution(points, rng_for(4, "descriptor", "ds/y"), **FAST).tobytes()
    assert one.tobytes() != shape_distribution(points, rng_for(5, "descriptor", "ds/x"), **FAST).tobytes()


def test_sphere_cube_and_rod_are_told_apart_by_a_linear_classifier():
    rng = np.random.default_rng(3)
    x = np.stack([shape_distribution(noisy(i % 3, rng), rng_for(0, "descriptor", str(i)), **FAST) for i in range(90)])
    y = np.arange(90) % 3
    # the class means are far apart relative to the within-class spread
    means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(x[y == c] - means[c], axis=1).mean() for c in range(3))
    assert min(np.linalg.norm(means[a] - means[b]) for a, b in ((0, 1), (0, 2), (1, 2))) > 2 * spread
    train = np.arange(90) < 45
    probs = fit_predict(x[train], y[train], x[~train], n_classes=3, val_x=x[train][:9], val_y=y[train][:9], seed=0)
    assert (probs.argmax(axis=1) == y[~train]).mean() >= 0.95


# ---- cached shapes ----------------------------------------------------------------------------------------------


def write_cache(root: Path, shapes: dict[str, np.ndarray], n_shards: int = 2) -> tuple[str, list[str]]:
    """Shards holding only ``pc_xyz`` (a point-cloud item cache, as the cache stage shards it) + the index."""
    rows, shards = [], []
    for s in range(n_shards):
        path = root / f"shard-{s:04d}.h5"
        with ShardWriter(
            path,
            dataset="syn",
            shard=s,
            n_shards=n_shards,
            kind="pointcloud",
            profile=PROFILE,
            keys=("pc_xyz",),
            compression="none",
        ) as writer:
            for sid in sorted(x for x in shapes if shard_of(x, n_shards) == s):
                rows.append((sid, s, path.name, len(writer._ids)))
                writer.append(sid, {"pc_xyz": shapes[sid].astype(np.float32)})
        shards.append(str(path))
    pd.DataFrame(rows, columns=["shape_id", "shard", "shard_file", "row"]).to_parquet(root / "index.parquet")
    return str(root / "index.parquet"), shards


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """18 shapes per class (sphere, cube, rod); labels by shape id."""
    rng = np.random.default_rng(7)
    shapes, labels = {}, {}
    for c, fn in enumerate(SHAPES):
        for i in range(18):
            sid = f"syn/{fn.__name__}/{i:02d}"
            shapes[sid], labels[sid] = noisy(c, rng), c
    index, shards = write_cache(tmp_path_factory.mktemp("descriptor"), shapes)
    return {"index": index, "shards": shards}, shapes, labels


def test_cached_features_read_pc_xyz_per_shape_id_whatever_the_selection(cache, monkeypatch):
    files, shapes, labels = cache
    rows = cached_rows(labels, files["index"], files["shards"])
    opened = []
    real_open = PointCloudNoRayBackend.open
    monkeypatch.setattr(PointCloudNoRayBackend, "open", lambda self, path: opened.append(path) or real_open(self, path))
    x = descriptor_features(rows, seed=1, knobs=FAST)
    assert sorted(opened) == sorted(files["shards"])  # each shard opened once
    first = rows[5]
    direct = shape_distribution(
        shapes[first.shape_id].astype(np.float32), rng_for(1, "descriptor", first.shape_id), **FAST
    )
    assert x[5].tobytes() == direct.tobytes()
    subset = descriptor_features(rows[5:3:-1], seed=1, knobs=FAST)  # another order and subset: same vectors
    assert subset.tobytes() == x[5:3:-1].tobytes()
    with pytest.raises(PermissionError):  # the UDF view cannot see surface points
        descriptor_features(rows[:1], seed=1, backend="udfgrid", knobs=FAST)
    with pytest.raises(ValueError, match="unknown descriptor setting"):
        descriptor_features(rows[:1], seed=1, knobs={"n_pair": 10})


# ---- classifier -------------------------------------------------------------------------------------------------


def test_absent_classes_get_zero_probability_in_a_full_width_output():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 5)) + np.repeat([[0.0], [3.0], [6.0]], 2, axis=0), np.array([0, 0, 2, 2, 4, 4])
    probs = fit_predict(x, y, rng.normal(size=(7, 5)), n_classes=6, seed=0)
    assert probs.shape == (7, 6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs[:, [1, 3, 5]] == 0).all()
    single = fit_predict(x[:2], y[:2], x, n_classes=6, seed=0)  # K = 1 with one class present
    assert single.shape == (6, 6) and (single[:, 0] == 1).all()


def test_c_is_chosen_on_validation_with_ties_to_the_smaller_c():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(20, 4)) + np.repeat([[0.0], [4.0]], 10, axis=0)
    y = np.repeat([0, 1], 10)
    c, scores = select_c(x[::2], y[::2], x[1::2], y[1::2], n_classes=2, c_grid=(10.0, 0.1, 1.0))
    assert c == 0.1 and set(scores) == {"0.1", "1.0", "10.0"} and all(s == 1.0 for s in scores.values())
    with pytest.raises(ValueError, match="validation"):
        select_c(x, y, x[:0], y[:0], n_classes=2)


# ---- job --------------------------------------------------------------------------------------------------------

FINETUNE_KEYS = {
    "dataset",
    "method",
    "k",
    "seed",
    "backend",
    "class_names",
    "selection",
    "selected_step",
    "steps",
    "train_shapes",
    "val_shapes",
    "test",
}


def _split(labels: dict[str, int]) -> dict[str, dict[str, int]]:
    ids = sorted(labels)
    return {
        "train": {s: labels[s] for s in ids if int(s[-2:]) < 6},
        "val": {s: labels[s] for s in ids if 6 <= int(s[-2:]) < 8},
        "test": {s: labels[s] for s in ids if int(s[-2:]) >= 8},
    }


def _params(**descriptor_knobs) -> dict:
    return {
        "dataset": "syn",
        "method": "descriptor",
        "k": 0,
        "seed": 2,
        "finetune": {"backend": "pointcloud_noray", "descriptor": {**FAST, **descriptor_knobs}},
    }


def test_job_writes_the_finetune_layout_and_never_reads_test_labels(cache, monkeypatch):
    files, _, labels = cache
    names = ["sphere", "cube", "rod", "empty"]  # a class without any shape: still a column
    seen = []
    real_report = descriptor_job.classification_report
    monkeypatch.setattr(
        descriptor_job,
        "classification_report",
        lambda logits, label, n: seen.append(logits.copy()) or real_report(logits, label, n),
    )
    split = _split(labels)
    metrics = descriptor_job.run_with_split(_params(), files, split, names, log=LOG)
    assert FINETUNE_KEYS <= set(metrics) and metrics["selection"] == "val" and metrics["selected_step"] is None
    assert metrics["train_shapes"] == 18 and metrics["val_shapes"] == 6 and metrics["test"]["n"] == 30
    assert metrics["test"]["draws"] == 1 and metrics["test"]["accuracy"] >= 0.9
    assert metrics["descriptor"]["C"] in descriptor.C_GRID and metrics["descriptor"]["bins"] == 32
    assert seen[0].shape == (30, 1, 4) and (seen[0][..., 3] == 0).all()

    ids = sorted(split["test"])
    shuffled = dict(zip(ids, np.random.default_rng(0).permutation([split["test"][s] for s in ids]).tolist()))
    again = descriptor_job.run_with_split(_params(), files, {**split, "test": shuffled}, names, log=LOG)
    assert np.array_equal(seen[1], seen[0]) and again["descriptor"] == metrics["descriptor"]

    no_val = descriptor_job.run_with_split(_params(default_c=0.5), files, {**split, "val": {}}, names, log=LOG)
    assert no_val["selection"] == "fixed" and no_val["descriptor"]["C"] == 0.5 and no_val["val_shapes"] == 0
    with pytest.raises(ValueError, match="unknown key"):
        descriptor_job.run_with_split(_params(bin=3), files, split, names, log=LOG)
