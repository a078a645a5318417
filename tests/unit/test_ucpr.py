"""UCPR: tie-aware ranks and MRR, the stratified eval subset, the seed rule, ablations, and the stage end to end.

The end-to-end inputs are a tiny real mesh cache (tokens_fixtures) and a random-init query_nepa encoder exported
with save_encoder.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline3d.embed.shapes import embed_shapes, eval_token_config
from pipeline3d.eval.ucpr import (
    ABLATIONS,
    METRIC_KEYS,
    ablate,
    allocate,
    chance_levels,
    check_seeds,
    expected_rank_stats,
    instance_metrics,
    stratified_subset,
    tie_counts,
)
from pipeline3d.models.registry import create_encoder
from pipeline3d.stages import eval_ucpr
from pipeline3d.tokens.collate import collate
from pipeline3d.tokens.dataset import CacheEntry, ShapeTokenDataset
from pipeline3d.tokens.layout import A_POINT, DIST, FEAT_DIM, N_TYPES, POINT, Q_POINT, n_positions
from tokens_fixtures import LABELS, write_labelled_mesh_dataset

PRETRAIN_TOKENS = {"n_point": 24, "n_ray": 12, "qa_tokens": True, "add_eos": True, "eval_seed": 0}
CLASS_NAMES = {0: "ring", 1: "solid"}
UCPR = {
    "max_files": None,
    "n_point": 16,
    "n_ray": 8,
    "mc_draws": 2,
    "pool": "eos",
    "query_seed": 0,
    "gallery_seed": 999,
    "ablations": ["none", "point_xyz", "point_dist"],
    "batch_size": 3,
}


# ---- tie-aware ranks and MRR -----------------------------------------------------------------------------------


def test_tie_aware_rank_reciprocal_rank_and_hits_on_a_hand_example():
    # true match = column of the row index
    sim = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # unique best: rank 1
            [0.5, 0.5, 0.7, 0.1],  # one above, one tied: positions 2 or 3
            [0.4, 0.4, 0.4, 0.4],  # all tied: positions 1..4
            [0.9, 0.8, 0.7, 0.6],
        ]
    )  # last: rank 4
    greater, ties = tie_counts(sim, np.arange(4))
    assert greater.tolist() == [0, 1, 0, 3] and ties.tolist() == [0, 1, 3, 0]
    rank, rr, hit = expected_rank_stats(greater, ties, (1, 2, 3), 4)
    assert rank.tolist() == [1.0, 2.5, 2.5, 4.0]
    np.testing.assert_allclose(rr, [1.0, (1 / 2 + 1 / 3) / 2, (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, 1 / 4])
    np.testing.assert_allclose(hit[1], [1.0, 0.0, 0.25, 0.0])
    np.testing.assert_allclose(hit[2], [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(hit[3], [1.0, 1.0, 0.75, 0.0])


def test_instance_metrics_from_vectors():
    # gallery: 3 orthogonal directions; query 0 -> its match; query 1 -> closer to gallery 0; query 2 -> tied
    # between gallery 1 and its match 2
    g = np.eye(3)
    q = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 1.0, 1.0]])
    m = instance_metrics(q, g, [0, 0, 1], ks=(1, 5, 10))
    ranks = [1.0, 2.0, 1.5]
    assert m["mean_rank"] == pytest.approx(np.mean(ranks)) and m["median_rank"] == pytest.approx(1.5)
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + (1 + 1 / 2) / 2) / 3)
    assert m["R@1"] == pytest.approx((1 + 0 + 0.5) / 3) and m["R@5"] == 1.0 and m["R@10"] == 1.0
    # categories: shapes 0, 1 are class 0, shape 2 class 1. Query 1's top item (gallery 0) is same-class.
    assert m["category_R@1"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert set(m) == set(METRIC_KEYS)


def test_a_collapsed_encoder_scores_exactly_chance_not_the_optimistic_rank_one():
    labels = [0, 0, 1, 1, 1, 2, 2]
    same = np.ones((7, 4))
    m, chance = instance_metrics(same, same, labels), chance_levels(labels)
    for key in ("R@1", "R@5", "R@10", "MRR", "mean_rank", "median_rank", "category_R@1"):
        assert m[key] == pytest.approx(chance[key]), key
    assert chance["R@1"] == pytest.approx(1 / 7) and chance["mean_rank"] == 4.0
    assert chance["MRR"] == pytest.approx(sum(1 / k for k in range(1, 8)) / 7)


def test_perfect_retrieval_and_chance_category_map_by_simulation():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(20, 8))
    labels = rng.integers(0, 3, 20)
    m = instance_metrics(v, v, labels)
    assert m["R@1"] == 1.0 and m["MRR"] == 1.0 and m["mean_rank"] == 1.0 and m["category_R@1"] == 1.0
    # the closed-form chance category mAP matches random rankings
    from pipeline3d.eval.retrieval import average_precision

    sims = rng.random((4000, 20))
    rel = labels[np.arange(4000) % 20][:, None] == labels[None, :]
    assert chance_levels(labels)["category_mAP"] == pytest.approx(np.nanmean(average_precision(sims, rel)), abs=0.01)


# ---- stratified subset -----------------------------------------------------------------------------------------


def test_allocation_is_proportional_with_largest_remainder_and_a_floor_of_one():
    assert allocate({0: 60, 1: 30, 2: 10}, 10) == {0: 6, 1: 3, 2: 1}
    assert allocate({0: 50, 1: 30, 2: 20}, 7) == {0: 4, 1: 2, 2: 1}  # 3.5, 2.1, 1.4 -> the 0.5 remainder wins
    assert allocate({0: 97, 1: 2, 2: 1}, 10) == {0: 8, 1: 1, 2: 1}  # tiny classes still get one each
    assert allocate({0: 97, 1: 2, 2: 1}, 2) == {0: 2, 1: 0, 2: 0}  # fewer slots than classes: no floor
    rng = random.Random(0)
    for _ in range(200):
        sizes = {c: rng.randint(1, 40) for c in range(rng.randint(1, 8))}
        total = rng.randint(1, sum(sizes.values()) + 5)
        quota = allocate(sizes, total)
        assert sum(quota.values()) == min(total, sum(sizes.values()))
        assert all(0 <= quota[c] <= sizes[c] for c in sizes)
        if total >= len(sizes):
            assert all(quota[c] >= 1 for c in sizes)


def _labels(sizes):
    return {f"ds/c{c}/s{i:03d}": c for c, n in sizes.items() for i in range(n)}


def test_stratified_subset_proportions_determinism_and_input_order():
    labels = _labels({0: 60, 1: 30, 2: 10})
    chosen = stratified_subset(labels, 10, seed=0)
    assert len(chosen) == 10 and chosen == sorted(chosen)
    per_class = {c: sum(labels[s] == c for s in chosen) for c in range(3)}
    assert per_class == {0: 6, 1: 3, 2: 1}
    items = list(labels.items())
    random.Random(1).shuffle(items)
    assert stratified_subset(dict(items), 10, seed=0) == chosen
    assert stratified_subset(labels, 10, seed=0) == chosen
    # not the first ids of each class, and another seed picks other shapes
    assert chosen != sorted(labels)[:6] + sorted(labels)[60:63] + sorted(labels)[90:91]
    assert stratified_subset(labels, 10, seed=1) != chosen
    # null / large max_files = everything
    assert stratified_subset(labels, None, seed=0) == sorted(labels)
    assert stratified_subset(labels, 1000, seed=0) == sorted(labels)
    # a shape's membership depends on its own key: growing max_files only adds shapes within a class
    assert set(stratified_subset(_labels({0: 60}), 5, 0)) <= set(stratified_subset(_labels({0: 60}), 9, 0))


# ---- seeds -----------------------------------------------------------------------------------------------------


def test_same_query_and_gallery_seed_is_refused():
    with pytest.raises(ValueError, match="query_seed and eval.ucpr.gallery_seed are both 7"):
        check_seeds(7, 7)
    check_seeds(0, 999)


# ---- ablations -------------------------------------------------------------------------------------------------

EXPECTED_SLOTS = {"point_xyz": ([0, 1, 2], [POINT, Q_POINT]), "point_dist": ([DIST], [POINT, A_POINT])}


def test_each_ablation_zeroes_exactly_its_slots_on_exactly_its_token_types():
    g = torch.Generator().manual_seed(0)
    type_id = torch.arange(N_TYPES).repeat(3, 2)  # every type, several times per row
    feat = torch.rand((*type_id.shape, FEAT_DIM), generator=g) + 0.5  # all non-zero
    batch = {
        "feat": feat,
        "type_id": type_id,
        "pos": torch.zeros_like(type_id),
        "valid": torch.ones_like(type_id, dtype=torch.bool),
    }
    before = feat.clone()
    assert torch.equal(ablate(batch, "none")["feat"], before)
    for name, (slots, types) in EXPECTED_SLOTS.items():
        out = ablate(batch, name)
        changed = out["feat"] != before
        expected = torch.zeros_like(changed)
        for t in types:
            expected[type_id == t] = torch.isin(torch.arange(FEAT_DIM), torch.tensor(slots))
        assert torch.equal(changed, expected), name
        assert (out["feat"][expected] == 0).all()
        assert torch.equal(batch["feat"], before)  # pure: the input batch is untouched
        assert out["type_id"] is type_id and out["valid"] is batch["valid"]
    assert set(ABLATIONS) == {"none", *EXPECTED_SLOTS}
    with pytest.raises(ValueError, match="unknown ablation"):
        ablate(batch, "point_t")


@pytest.fixture(scope="module")
def mesh_ds(tmp_path_factory):
    """Cache, manifest, ttv, unpaired (four eval shapes) and an exported random-init encoder."""
    root = tmp_path_factory.mktemp("ucprds")
    split = dict(zip(sorted(LABELS), ["test", "test", "train", "test", "train"]))
    files = write_labelled_mesh_dataset(root, split, CLASS_NAMES, PRETRAIN_TOKENS)
    ids = sorted(LABELS)
    unpaired = ["eval", "eval", "train_mesh", "eval", "eval"]
    pd.DataFrame({"shape_id": ids, "label": [LABELS[s] for s in ids], "split": unpaired}).to_parquet(
        root / "unpaired.parquet"
    )
    return {**files, "unpaired": str(root / "unpaired.parquet")}


def _dataset(mesh_ds, backend, qa_tokens):
    from pipeline3d.data.cache_lookup import locate_rows

    where = locate_rows(mesh_ds["index"], mesh_ds["shards"])
    entries = [CacheEntry(s, str(where[s][0]), int(where[s][1]), LABELS[s]) for s in sorted(LABELS)]
    tok = eval_token_config(PRETRAIN_TOKENS | {"qa_tokens": qa_tokens}, n_point=16, n_ray=8, eval_seed=0)
    return ShapeTokenDataset(entries, backend, tok, seed=0, mode="eval", mc_draws=1)


@pytest.mark.parametrize("backend,qa_tokens,dist_type", [("mesh", True, A_POINT), ("udfgrid", False, POINT)])
def test_point_dist_ablation_changes_what_reaches_the_model(mesh_ds, backend, qa_tokens, dist_type):
    ds = _dataset(mesh_ds, backend, qa_tokens)
    batch = collate([ds.item(i) for i in range(len(ds))])
    on_type = batch["type_id"] == dist_type
    assert on_type.any() and (batch["feat"][on_type][:, DIST] != 0).any()  # real distances to remove
    ablated = ablate(batch, "point_dist")
    assert (ablated["feat"][on_type][:, DIST] == 0).all()
    assert not torch.equal(ablated["feat"], batch["feat"])

    class Spy(torch.nn.Module):
        """Delegates to the encoder and records the token features it is given."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.seen = inner, []

        def forward(self, feat, *args, **kwargs):
            self.seen.append(feat.clone())
            return self.inner(feat, *args, **kwargs)

        def pool(self, *args, **kwargs):
            return self.inner.pool(*args, **kwargs)

    torch.manual_seed(0)
    inner = create_encoder("query_nepa_tiny", d_model=16, depth=1, heads=2, n_positions=n_positions(PRETRAIN_TOKENS))
    vectors = {}
    for name in ("none", "point_dist"):
        spy = Spy(inner)
        vectors[name] = embed_shapes(
            spy,
            ds,
            batch_size=8,
            pool="eos",
            causal=True,
            transform=lambda b, n=name: ablate(b, n),
            normalize_draws=True,
        )
        seen = torch.cat([f.reshape(-1, FEAT_DIM) for f in spy.seen])
        reached = seen[:, DIST]
        assert (reached != 0).any() if name == "none" else (reached == 0).all()
    assert not np.allclose(vectors["none"], vectors["point_dist"])
    ds.close()


# ---- the stage -------------------------------------------------------------------------------------------------


def _params(**ucpr):
    return {
        "seed": 0,
        "dataset": "ds",
        "method": "nepa",
        "query": "mesh",
        "gallery": "udfgrid",
        "ucpr": UCPR | ucpr,
        "tokens": PRETRAIN_TOKENS,
        "stage_version": 1,
    }


def _run(params, inputs, out):
    return eval_ucpr.main(
        ["--params", json.dumps(params), "--inputs", json.dumps(inputs), "--metrics", str(out), "--threads", "1"]
    )


def test_stage_end_to_end(tmp_path, mesh_ds):
    out = tmp_path / "ucpr.json"
    assert _run(_params(), mesh_ds, out) == 0
    m = json.loads(out.read_text())
    assert {"protocol", "git", "seconds", "n_shapes", "per_class_counts", "chance", "ablations"} <= set(m)
    assert m["protocol"] == _params() and m["eval_set"] == "unpaired:eval"
    assert m["n_shapes"] == 4 and m["per_class_counts"] == {"ring": 2, "solid": 2}
    assert set(m["ablations"]) == {"none", "point_xyz", "point_dist"}
    n = m["n_shapes"]
    for name, res in [("chance", m["chance"]), *m["ablations"].items()]:
        assert set(res) == set(METRIC_KEYS), name
        assert 1.0 <= res["mean_rank"] <= n and 1.0 <= res["median_rank"] <= n
        assert all(0.0 <= res[k] <= 1.0 for k in ("R@1", "R@5", "R@10", "MRR", "category_mAP", "category_R@1"))
        assert res["R@1"] <= res["R@5"] <= res["R@10"] == 1.0  # 4 shapes: always in the top 10
    assert m["chance"]["mean_rank"] == 2.5
    # every ablation removed real values on both sides (the reference's dist ablation removed none)
    assert all(
        m["ablation_zeroed_values"][a][side] > 0 for a in ("point_xyz", "point_dist") for side in ("query", "gallery")
    )
    # max_files: a class-stratified subset; same bytes of results on a rerun
    out2 = tmp_path / "ucpr2.json"
    assert _run(_params(max_files=2, ablations=["none"]), mesh_ds, out2) == 0
    m2 = json.loads(out2.read_text())
    assert m2["n_shapes"] == 2 and m2["per_class_counts"] == {"ring": 1, "solid": 1}
    assert m2["per_class_available"] == {"ring": 2, "solid": 2}
    out3 = tmp_path / "ucpr3.json"
    assert _run(_params(max_files=2, ablations=["none"]), mesh_ds, out3) == 0
    assert json.loads(out3.read_text())["ablations"] == m2["ablations"]


def test_stage_falls_back_to_ttv_test_without_an_unpaired_split(tmp_path, mesh_ds):
    empty = tmp_path / "unpaired.parquet"
    pd.DataFrame(
        {"shape_id": pd.Series([], dtype=str), "label": pd.Series([], dtype="int64"), "split": pd.Series([], dtype=str)}
    ).to_parquet(empty)
    out = tmp_path / "ucpr.json"
    assert _run(_params(ablations=["none"]), mesh_ds | {"unpaired": str(empty)}, out) == 0
    m = json.loads(out.read_text())
    assert m["eval_set"] == "ttv:test" and m["n_shapes"] == 3


def test_stage_refuses_same_seeds_naming_the_keys(tmp_path, mesh_ds, capfd):
    out = tmp_path / "ucpr.json"
    assert _run(_params(gallery_seed=0), mesh_ds, out) == 1
    errors = " ".join(line for line in capfd.readouterr().err.splitlines() if "| ERROR |" in line)
    assert "query_seed" in errors and "gallery_seed" in errors
    assert not out.exists()
