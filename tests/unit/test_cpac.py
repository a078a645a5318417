"""CPAC-UDF completion probe: ridge head, metrics, shape caps, query-only sequences, read permissions, the stage.

Real inputs: tiny mesh cache shards (tokens_fixtures) and a random-init query_nepa encoder exported with save_encoder.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import Ridge

from pipeline3d.data.cache_lookup import locate_rows
from pipeline3d.eval import cpac as C
from pipeline3d.eval import cpac_features as CF
from pipeline3d.eval import cpac_sequence as CS
from pipeline3d.eval import cpac_shapes as CSh
from pipeline3d.io.cache_schema import PRIMITIVE_ARRAYS
from pipeline3d.io.shards import ShardReader
from pipeline3d.jobs import eval_cpac as jobs_eval_cpac
from pipeline3d.models.registry import create_encoder
from pipeline3d.stages import eval_cpac
from pipeline3d.tokens import layout as L
from pipeline3d.tokens.backends import get_backend
from pipeline3d.tokens.layout import n_positions
from pipeline3d.train.export import load_encoder, save_encoder
from tokens_fixtures import LABELS, naive_morton, write_mesh_cache

PRETRAIN = {"n_point": 24, "n_ray": 12, "qa_tokens": True, "add_eos": True, "eval_seed": 0}
CLASS_NAMES = {0: "ring", 1: "solid"}
SPLIT = {
    "ds/ring/torus": "train_udf",
    "ds/solid/box": "train_udf",
    "ds/ring/annulus": "eval",
    "ds/solid/ball": "eval",
    "ds/solid/capsule": "eval",
}
CPAC = {
    "n_context": 16,
    "n_query": 16,
    "head": "non_transductive",
    "head_split": "train_udf",
    "head_backend": "udfgrid",
    "transductive_fraction": 0.34,
    "ridge_lambda": 1e-3,
    "tau": 0.03,
    "max_head_shapes": None,
    "max_eval_shapes": None,
    "batch_size": 2,
}


# ---- ridge ---------------------------------------------------------------------------------------------------------


def _regression(n=60, d=7, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=3.0, size=(n, d))  # off-centre features: the intercept matters
    y = x @ rng.normal(size=d) + 2.0 + 0.1 * rng.normal(size=n)
    return x, y, rng.normal(loc=3.0, size=(20, d))


@pytest.mark.parametrize("lam", [1e-3, 0.5, 20.0])
def test_ridge_matches_sklearn_and_augmented_lstsq(lam):
    x, y, x_new = _regression()
    w, b = C.ridge_fit(x, y, lam)
    # sklearn centres X and y, i.e. exactly an unpenalised intercept
    ref = Ridge(alpha=lam, fit_intercept=True).fit(x, y)
    assert np.allclose(C.ridge_predict(x_new, w, b), ref.predict(x_new), atol=1e-8, rtol=0)
    # the same problem as least squares on [X 1; sqrt(lam) I 0] against [y; 0]
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    reg = np.concatenate([np.sqrt(lam) * np.eye(x.shape[1]), np.zeros((x.shape[1], 1))], axis=1)
    beta = np.linalg.lstsq(np.concatenate([a, reg]), np.concatenate([y, np.zeros(x.shape[1])]), rcond=None)[0]
    assert np.allclose(np.append(w, b), beta, atol=1e-8, rtol=0)


def test_ridge_unregularised_is_least_squares_and_blocks_add_up():
    x, y, _ = _regression()
    w, b = C.ridge_fit(x, y, 0.0)
    beta = np.linalg.lstsq(np.concatenate([x, np.ones((len(x), 1))], axis=1), y, rcond=None)[0]
    assert np.allclose(np.append(w, b), beta, atol=1e-8, rtol=0)
    acc = C.RidgeAccumulator(x.shape[1])
    for part in np.array_split(np.arange(len(x)), 3):
        acc.add(x[part], y[part])
    w3, b3 = acc.solve(0.5)
    w1, b1 = C.ridge_fit(x, y, 0.5)
    assert np.allclose(w3, w1, atol=1e-12) and abs(b3 - b1) < 1e-12 and acc.y_mean == pytest.approx(y.mean())


def test_ridge_bias_is_not_penalised():
    x, y, _ = _regression()
    w, b = C.ridge_fit(x, y, 1e12)
    assert np.abs(w).max() < 1e-6 and b == pytest.approx(y.mean(), abs=1e-5)


# ---- metrics -------------------------------------------------------------------------------------------------------


def test_iou_by_hand():
    y = np.array([0.01, 0.02, 0.1, 0.2])
    yhat = np.array([0.02, 0.2, 0.01, 0.3])
    assert C.iou_at(y, yhat, 0.03) == pytest.approx(1 / 3)  # {0,1} vs {0,2}
    assert C.iou_at(y, y, 0.03) == 1.0
    assert C.iou_at(y, yhat, 0.005) is None  # nothing near the surface on either side: undefined


def test_summarize_pooled_per_class_per_shape_by_hand():
    y = np.array([[0.0, 0.1], [0.02, 0.5], [0.2, 0.2]])
    yhat = np.array([[0.01, 0.1], [0.05, 0.3], [0.2, 0.6]])
    out = C.summarize(y, yhat, [0, 0, 1], CLASS_NAMES, tau=0.03)
    pooled = out["pooled"]
    assert pooled["mae"] == pytest.approx(0.64 / 6) and pooled["rmse"] == pytest.approx(np.sqrt(0.201 / 6))
    assert pooled["bias"] == pytest.approx(0.24 / 6) and pooled["n_points"] == 6
    assert pooled["iou"] == pytest.approx(0.5)  # near: y {0, 2}, yhat {0}
    ring, solid = out["per_class"]["ring"], out["per_class"]["solid"]
    assert ring["mae"] == pytest.approx(0.06) and ring["iou"] == pytest.approx(0.5) and ring["n_shapes"] == 2
    assert solid["mae"] == pytest.approx(0.2) and solid["iou"] is None and solid["n_points"] == 2
    per_shape = out["per_shape"]
    maes = np.array([0.005, 0.115, 0.2])
    assert per_shape["mae"]["mean"] == pytest.approx(maes.mean())
    assert per_shape["mae"]["std"] == pytest.approx(maes.std())
    assert per_shape["iou"] == pytest.approx({"mean": 0.5, "std": 0.5, "n": 2})  # shape 3 has no IoU


def test_stratified_subset():
    ids = [f"a/{i}" for i in range(10)] + [f"b/{i}" for i in range(5)]
    labels = [0] * 10 + [1] * 5
    pick = C.stratified_subset(ids, labels, 6, "s")
    assert sum(p.startswith("a/") for p in pick) == 4 and sum(p.startswith("b/") for p in pick) == 2
    order = np.random.default_rng(0).permutation(len(ids))
    assert C.stratified_subset([ids[i] for i in order], [labels[i] for i in order], 6, "s") == pick
    assert C.stratified_subset(ids, labels, 6, "other salt") != pick
    assert C.stratified_subset(ids, labels, None, "s") == sorted(ids) == C.stratified_subset(ids, labels, 99, "s")


# ---- sequences and features on a real cache ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpac_ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpacds")
    index, shards = write_mesh_cache(root)
    ids = sorted(LABELS)
    pd.DataFrame(
        {
            "shape_id": ids,
            "dataset": "ds",
            "kind": "mesh",
            "label": [LABELS[s] for s in ids],
            "label_name": [CLASS_NAMES[LABELS[s]] for s in ids],
            "meta": "{}",
        }
    ).to_parquet(root / "man.parquet")
    pd.DataFrame(
        {"shape_id": ids, "label": [LABELS[s] for s in ids], "split": [SPLIT[s] for s in ids], "primitive": "all"}
    ).to_parquet(root / "unpaired.parquet")
    pd.DataFrame({"shape_id": ids, "label": [LABELS[s] for s in ids], "split": "test", "group": ids}).to_parquet(
        root / "ttv.parquet"
    )
    files = {
        "manifest": str(root / "man.parquet"),
        "unpaired": str(root / "unpaired.parquet"),
        "ttv": str(root / "ttv.parquet"),
        "index": str(index),
        "shards": [str(s) for s in shards],
    }
    for name, qa in (("qa", True), ("legacy", False)):
        tokens = PRETRAIN | {"qa_tokens": qa}
        torch.manual_seed(0)
        encoder = create_encoder("query_nepa_tiny", d_model=16, depth=1, heads=2, n_positions=n_positions(tokens))
        save_encoder(
            encoder,
            root / f"{name}.safetensors",
            root / f"{name}.json",
            extra={"method": "nepa", "causal": True, "tokens": tokens},
        )
        files[name] = {"weights": str(root / f"{name}.safetensors"), "encoder_json": str(root / f"{name}.json")}
    return files


def _shapes(files, ids):
    where = locate_rows(files["index"], files["shards"])
    return CSh.shapes_from(where, LABELS, ids)


def _pools(files, sid, backend="pointcloud_noray"):
    shape = _shapes(files, [sid])[0]
    source = CSh.ShapeSource(backend)
    try:
        return source.load(shape)
    finally:
        source.close()


def test_query_tokens_carry_no_answer_and_are_disjoint_from_the_context(cpac_ds):
    pools, _ = _pools(cpac_ds, "ds/solid/box")
    tok = CS.context_token_config(PRETRAIN, 16)
    seq = CS.build_sequence(pools, tok, 16, CS.draw_rng(0, "test", "ds/solid/box"))
    types = seq.type_id
    assert len(types) == 1 + 2 * 16 + 16 + 1 and types[0] == L.BOS and types[-1] == L.EOS
    assert (types == L.A_POINT).sum() == 16 and (types == L.Q_POINT).sum() == 32
    q = seq.query_slots
    assert (types[q] == L.Q_POINT).all() and not np.isin(types[q + 1], [L.A_POINT]).any()  # no answer follows
    assert not np.isin(q, np.flatnonzero(types == L.A_POINT) - 1).any()
    # query features: xyz only (no distance, fake or real), the pool's own positions, Morton-ordered
    assert np.array_equal(seq.feat[q, L.XYZ], pools["pt_xyz"][seq.query_index])
    assert not seq.feat[q][:, 3:].any()
    assert (np.diff(naive_morton(seq.feat[q, L.XYZ])) >= 0).all()
    # disjoint draws; the context carries the backend's own distances
    assert len(set(seq.query_index) & set(seq.context_index)) == 0 and len(set(seq.query_index)) == 16
    answers = seq.feat[types == L.A_POINT, L.DIST]
    assert np.allclose(np.sort(answers), np.sort(pools["pt_dist"][seq.context_index]))
    # positions: the pretrained layout for the context, the next point slot for every query, EOS where it was
    assert np.array_equal(seq.pos[1:33], np.arange(1, 33)) and (seq.pos[q] == 33).all()
    assert seq.pos[-1] == 1 + 2 * 24 + 2 * 12
    # draws are keyed by role and shape id
    again = CS.build_sequence(pools, tok, 16, CS.draw_rng(0, "test", "ds/solid/box"))
    head = CS.build_sequence(pools, tok, 16, CS.draw_rng(0, "head", "ds/solid/box"))
    assert np.array_equal(again.feat, seq.feat) and not np.array_equal(head.context_index, seq.context_index)


def test_legacy_queries_are_points_with_a_zero_distance(cpac_ds):
    pools, _ = _pools(cpac_ds, "ds/ring/torus", "udfgrid")
    tok = CS.context_token_config(PRETRAIN | {"qa_tokens": False}, 10)
    seq = CS.build_sequence(pools, tok, 5, CS.draw_rng(0, "test", "ds/ring/torus"))
    q = seq.query_slots
    assert (seq.type_id[q] == L.POINT).all() and not seq.feat[q, L.DIST].any() and (seq.pos[q] == 11).all()
    assert (seq.type_id == L.POINT).sum() == 15 and (seq.feat[1:11, L.DIST] > 0).any()


def test_context_must_leave_a_query_slot():
    with pytest.raises(ValueError, match="n_context <= 23"):
        CS.context_token_config(PRETRAIN, 24)
    with pytest.raises(ValueError, match="without overlap"):
        CS.draw_context_query(30, 20, 11, np.random.default_rng(0))


def test_query_features_depend_on_context_and_the_query_only(cpac_ds):
    encoder = load_encoder(cpac_ds["qa"]["weights"], cpac_ds["qa"]["encoder_json"])
    tok = CS.context_token_config(PRETRAIN, 16)
    seqs = [
        CS.build_sequence(_pools(cpac_ds, sid)[0], tok, 16, CS.draw_rng(0, "test", sid))
        for sid in ("ds/solid/box", "ds/ring/torus", "ds/solid/ball")
    ]
    full = CF.query_features(encoder, seqs, batch_size=3, causal=True)
    one = CF.query_features(encoder, seqs, batch_size=1, causal=True)
    assert all(np.array_equal(a, b) for a, b in zip(full, one))  # batch composition does not matter
    # drop half of the queries and reverse the rest: each remaining query keeps its features
    s = seqs[0]
    keep = s.query_slots[:8][::-1]
    rows = np.concatenate([np.arange(s.query_slots[0]), keep, [len(s.type_id) - 1]])
    fewer = dataclasses.replace(
        s,
        feat=s.feat[rows],
        type_id=s.type_id[rows],
        pos=s.pos[rows],
        query_slots=np.arange(s.query_slots[0], s.query_slots[0] + 8),
    )
    for causal in (True, False):
        ref = CF.query_features(encoder, [s], batch_size=1, causal=causal)[0]
        got = CF.query_features(encoder, [fewer], batch_size=1, causal=causal)[0]
        assert np.allclose(got, ref[:8][::-1], atol=1e-5)
    # ... but they do depend on the context
    other = dataclasses.replace(s, feat=s.feat.copy())
    other.feat[1:33:2, L.XYZ] *= 0.5
    assert not np.allclose(CF.query_features(encoder, [other], batch_size=1, causal=True)[0], full[0], atol=1e-4)


def test_context_never_reads_another_primitives_arrays(cpac_ds, monkeypatch):
    reads = []
    original = ShardReader.read

    def spy(self, row, keys=None):
        reads.append((set(self.allowed), tuple(keys or ())))
        return original(self, row, keys)

    monkeypatch.setattr(ShardReader, "read", spy)
    encoder = load_encoder(cpac_ds["qa"]["weights"], cpac_ds["qa"]["encoder_json"])
    tok = CS.context_token_config(PRETRAIN, 16)
    shapes = _shapes(cpac_ds, ["ds/ring/annulus", "ds/solid/capsule"])
    results = list(
        CF.encode_shapes(encoder, shapes, "udfgrid", tok, n_query=16, seed=0, role="test", batch_size=2, causal=True)
    )
    udf = set(PRIMITIVE_ARRAYS["udf"])
    context_reads = [keys for allowed, keys in reads if C.TARGET_KEY not in keys]
    target_reads = [(allowed, keys) for allowed, keys in reads if C.TARGET_KEY in keys]
    assert len(target_reads) == 2 and all(keys == (C.TARGET_KEY,) for _, keys in target_reads)
    assert all(set(keys) <= udf for keys in context_reads) and len(context_reads) == 2
    assert all(allowed <= udf for allowed, keys in reads if C.TARGET_KEY not in keys)
    with pytest.raises(PermissionError):
        get_backend("udfgrid").open(shapes[0].shard_path).read(shapes[0].row, [C.TARGET_KEY])
    # the target is the exact mesh distance at the queries; the baselines are geometry of the drawn context
    monkeypatch.setattr(ShardReader, "read", original)
    for shape, res in zip(shapes, results):
        pools, _ = _pools(cpac_ds, shape.shape_id, "udfgrid")
        seq = CS.build_sequence(pools, tok, 16, CS.draw_rng(0, "test", shape.shape_id))
        with ShardReader(shape.shard_path, "all") as reader:
            exact = reader.read(shape.row, [C.TARGET_KEY])[C.TARGET_KEY]
        assert np.array_equal(res.target, exact[seq.query_index].astype(np.float64))
        gaps = np.linalg.norm(seq.query_xyz[:, None] - seq.context_xyz[None], axis=-1)
        assert np.allclose(res.context_nn, gaps.min(1)) and (res.context_bound >= res.context_nn).all()
        assert res.features.shape == (16, 16) and np.isfinite(res.features).all()


# ---- the stage -----------------------------------------------------------------------------------------------------


def _run(tmp_path, files, name="out.json", encoder="qa", backend="pointcloud_noray", **cpac):
    params = {
        "seed": 0,
        "dataset": "ds",
        "method": "nepa",
        "context_backend": backend,
        "cpac": CPAC | cpac,
        "tokens": PRETRAIN,
        "stage_version": 1,
    }
    inputs = {k: files[k] for k in ("manifest", "unpaired", "ttv", "index", "shards")} | files[encoder]
    out = tmp_path / name
    code = eval_cpac.main(
        ["--params", json.dumps(params), "--inputs", json.dumps(inputs), "--metrics", str(out), "--threads", "1"]
    )
    return code, out


def _finite_metrics(block):
    pooled = block["pooled"]
    return all(np.isfinite(pooled[k]) for k in ("mae", "rmse", "bias")) and pooled["n_points"] > 0


def _without(path, keys=("seconds",)) -> str:
    """The metrics JSON text without the given top-level keys (the wall-clock seconds differ between runs)."""
    return json.dumps(
        {k: v for k, v in json.loads(path.read_text()).items() if k not in keys}, indent=2, sort_keys=True
    )


def test_stage_end_to_end_reproducible(tmp_path, cpac_ds, no_network):
    code_a, a = _run(tmp_path, cpac_ds, "a.json")
    code_b, b = _run(tmp_path, cpac_ds, "b.json", batch_size=3)
    code_c, c = _run(tmp_path, cpac_ds, "c.json")
    assert code_a == code_b == code_c == 0
    ja = json.loads(a.read_text())
    assert {"protocol", "git", "seconds", "n_head_shapes", "n_eval_shapes", "metrics"} <= set(ja)
    assert ja["n_head_shapes"] == 2 and ja["n_eval_shapes"] == 3 and ja["eval_shapes_from"] == "unpaired:eval"
    for key in ("probe", "constant", "context_nn", "context_bound"):
        assert _finite_metrics(ja["metrics"][key]) and set(ja["metrics"][key]["per_class"]) == {"ring", "solid"}
    assert ja["metrics"]["probe"]["pooled"]["n_points"] == 3 * 16
    assert ja["queries"]["token"] == "Q_POINT" and ja["queries"]["position"] == 33 and not ja["queries"]["caveats"]
    # the same bytes on a rerun (wall-clock seconds aside), and the same results whatever the batch size
    assert _without(a) == _without(c)
    assert _without(a, ("seconds", "protocol")) == _without(b, ("seconds", "protocol"))


def test_stage_transductive_and_legacy(tmp_path, cpac_ds, no_network):
    code, out = _run(tmp_path, cpac_ds, "t.json", head="transductive", backend="udfgrid")
    metrics = json.loads(out.read_text())
    assert code == 0 and metrics["n_head_shapes"] == 1 and metrics["n_eval_shapes"] == 2
    assert metrics["head"]["backend"] == "udfgrid" and metrics["head"]["split"] == "eval"
    code, out = _run(tmp_path, cpac_ds, "l.json", encoder="legacy")
    metrics = json.loads(out.read_text())
    assert code == 0 and metrics["queries"]["token"] == "POINT" and metrics["queries"]["position"] == 17
    assert metrics["queries"]["caveats"] == [C.LEGACY_CAVEAT] and _finite_metrics(metrics["metrics"]["probe"])


def test_stage_bad_config_is_a_clear_error(tmp_path, cpac_ds, capfd, no_network):
    code, out = _run(tmp_path, cpac_ds, "x.json", n_context=24)
    assert code == 1 and not out.exists() and "n_context <= 23" in capfd.readouterr().err
    code, out = _run(tmp_path, cpac_ds, "y.json", head_split="train_pc")
    assert code == 1 and "train_pc" in capfd.readouterr().err


def test_stage_sends_every_input_to_the_encoders_device(tmp_path, cpac_ds, monkeypatch):
    """With the encoder on ``meta`` (tests/unit/test_device_policy.py), the stage reaches its first copy back to
    the host: nothing it hands the encoder stayed on the CPU."""
    monkeypatch.setenv("PIPELINE3D_DEVICE", "meta")
    params = {
        "seed": 0,
        "dataset": "ds",
        "method": "nepa",
        "context_backend": "pointcloud_noray",
        "cpac": CPAC,
        "tokens": PRETRAIN,
        "stage_version": 1,
    }
    inputs = {k: cpac_ds[k] for k in ("manifest", "unpaired", "ttv", "index", "shards")} | cpac_ds["qa"]
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):
        jobs_eval_cpac.run(params, inputs, logging.getLogger("test"))
