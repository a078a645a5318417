"""Retrieval metrics: hand cases, ties, sklearn agreement for AP, and the qg mean/std protocol."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from pipeline3d.eval.retrieval import average_precision, qg_rank_map, rank_map, ranks, recall_at_k


def test_ranks_ap_and_recall_by_hand_with_ties_in_gallery_order():
    sim = np.array(
        [
            [0.5, 0.9, 0.5, 0.1],  # order 1, 0, 2, 3 (tie 0/2 keeps gallery order)
            [0.5, 0.9, 0.5, 0.1],
            [0.1, 0.2, 0.3, 0.4],  # order 3, 2, 1, 0
            [0.0, 0.0, 0.0, 0.0],
        ]
    )  # all tied: gallery order
    rel = np.array(
        [
            [False, False, True, True],  # relevant at ranks 3, 4
            [True, False, False, False],  # relevant at rank 2
            [False, False, False, False],  # no relevant item
            [False, True, False, True],
        ]
    )  # ranks 2, 4
    assert ranks(sim, rel).tolist() == [3, 2, 0, 2]
    ap = average_precision(sim, rel)
    np.testing.assert_allclose(ap[[0, 1, 3]], [(1 / 3 + 2 / 4) / 2, 1 / 2, (1 / 2 + 2 / 4) / 2], atol=1e-12)
    assert np.isnan(ap[2])
    # the query without a relevant item is left out: 3 scored queries with first ranks 3, 2, 2
    assert recall_at_k(sim, rel, [1, 2, 3]) == {1: 0.0, 2: pytest.approx(2 / 3), 3: 1.0}


def test_average_precision_matches_sklearn_per_query():
    rng = np.random.default_rng(7)
    sim = rng.normal(size=(20, 30))  # continuous: no ties
    rel = rng.random((20, 30)) < 0.2
    rel[:, 0] = True  # every query has a relevant item
    ap = average_precision(sim, rel)
    for q in range(20):
        assert ap[q] == pytest.approx(average_precision_score(rel[q], sim[q]), abs=1e-12)


def test_recall_is_monotone_in_k_and_reaches_one():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(25, 40))
    rel = rng.random((25, 40)) < 0.1
    rel[0] = False  # one query without any relevant item
    ks = [1, 2, 5, 10, 20, 40]
    rec = recall_at_k(sim, rel, ks)
    values = [rec[k] for k in ks]
    assert values == sorted(values) and values[-1] == 1.0
    first = ranks(sim, rel)
    assert rec[5] == pytest.approx(np.mean(first[first > 0] <= 5))


def test_metric_input_validation():
    with pytest.raises(ValueError, match="shape mismatch"):
        ranks(np.zeros((2, 3)), np.zeros((2, 4), dtype=bool))
    with pytest.raises(ValueError, match="boolean"):
        ranks(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        ranks(np.full((1, 2), np.nan), np.zeros((1, 2), dtype=bool))
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(np.zeros((1, 2)), np.ones((1, 2), dtype=bool), [0])
    with pytest.raises(ValueError, match="shape mismatch"):
        rank_map(np.ones((2, 3)), np.zeros(2), np.ones((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="query labels"):
        rank_map(np.ones((2, 3)), np.zeros(3), np.ones((4, 3)), np.zeros(4))


def test_rank_map_by_hand():
    # queries (1,0) label 0 and (0,1) label 1; gallery (0.8,0.6) l0, (0.6,0.8) l1, (-1,0) l1, (0,-1) l2
    q = np.array([[2.0, 0.0], [0.0, 1.0]])
    g = np.array([[0.8, 0.6], [0.6, 0.8], [-1.0, 0.0], [0.0, -1.0]])
    # query 0: cos .8, .6, -1, 0 -> order 0, 1, 3, 2; relevant {0}: rank 1, AP 1
    # query 1: cos .6, .8, 0, -1 -> order 1, 0, 2, 3; relevant {1, 2}: ranks 1, 3 -> AP (1 + 2/3) / 2
    out = rank_map(q, np.array([0, 1]), g, np.array([0, 1, 1, 2]), ks=(1, 2))
    assert out["rank@1"] == 1.0 and out["rank@2"] == 1.0
    assert out["mAP"] == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)
    assert (out["n_query"], out["n_gallery"], out["n_query_without_relevant"]) == (2, 4, 0)


VECTORS = {
    "d/a/1": [1.0, 0.0],
    "d/a/2": [0.8, 0.6],
    "d/a/3": [0.6, 0.8],
    "d/b/1": [0.0, 1.0],
    "d/b/2": [-0.6, 0.8],
    "d/c/1": [1.0, 1.0],
}
LABELS = {"d/a/1": 0, "d/a/2": 0, "d/a/3": 0, "d/b/1": 1, "d/b/2": 1, "d/c/1": 2}


def _qg() -> pd.DataFrame:
    rows = [
        (0, "d/a/1", "query"),
        (0, "d/b/1", "query"),
        (0, "d/b/2", "gallery"),
        (0, "d/a/3", "gallery"),
        (0, "d/a/2", "gallery"),
        (1, "d/a/3", "query"),
        (1, "d/c/1", "query"),
        (1, "d/b/2", "gallery"),
        (1, "d/b/1", "gallery"),
        (1, "d/a/1", "gallery"),
    ]
    return pd.DataFrame([(s, i, LABELS[i], r) for s, i, r in rows], columns=["split_id", "shape_id", "label", "role"])


def test_qg_rank_map_mean_and_std_over_splits_by_hand():
    # split 0: d/a/1 (1,0): cos a2 .8, a3 .6, b2 -.6 -> rank 1, AP 1
    #          d/b/1 (0,1): cos a2 .6, a3 .8, b2 .8 -> tie a3/b2 broken by id (a3 first) -> rank 2, AP 1/2
    #          rank@1 1/2, rank@2 1, mAP 3/4
    # split 1: d/a/3 (.6,.8): cos a1 .6, b1 .8, b2 .28 -> rank 2, AP 1/2; d/c/1 has no label-2 gallery item
    #          rank@1 0, rank@2 1, mAP 1/2
    out = qg_rank_map(VECTORS, LABELS, _qg(), ks=(1, 2))
    assert out["n_splits"] == 2
    assert [s["split_id"] for s in out["per_split"]] == [0, 1]
    assert out["per_split"][0]["mAP"] == pytest.approx(0.75) and out["per_split"][1]["mAP"] == pytest.approx(0.5)
    # sample std (ddof=1) of two splits: |a - b| / sqrt(2)
    assert out["rank@1"] == pytest.approx(0.25) and out["std"]["rank@1"] == pytest.approx(0.5 / np.sqrt(2))
    assert out["rank@2"] == pytest.approx(1.0) and out["std"]["rank@2"] == pytest.approx(0.0)
    assert out["mAP"] == pytest.approx(0.625) and out["std"]["mAP"] == pytest.approx(0.25 / np.sqrt(2))
    assert out["n_query_without_relevant"] == 1
    assert out["per_split"][1]["n_query"] == 2 and out["per_split"][1]["n_query_without_relevant"] == 1


def test_qg_rank_map_ignores_row_order_and_accepts_id_vector_pairs():
    ids = list(VECTORS)[::-1]
    pair = (ids, np.array([VECTORS[i] for i in ids]))
    shuffled = _qg().sample(frac=1.0, random_state=0)
    assert qg_rank_map(pair, None, shuffled, ks=(1, 2)) == qg_rank_map(VECTORS, LABELS, _qg(), ks=(1, 2))


def test_qg_rank_map_validation_names_the_problem():
    qg = _qg()
    partial = {k: v for k, v in VECTORS.items() if k != "d/b/2"}
    with pytest.raises(ValueError, match=r"1 qg shape id\(s\) have no vector, e.g. \['d/b/2'\]"):
        qg_rank_map(partial, LABELS, qg)
    with pytest.raises(ValueError, match="have no label"):
        qg_rank_map(VECTORS, {"d/a/1": 0}, qg)
    both = pd.concat([qg, pd.DataFrame([(0, "d/a/1", 0, "gallery")], columns=qg.columns)])
    with pytest.raises(ValueError, match="both query and gallery"):
        qg_rank_map(VECTORS, LABELS, both)
    with pytest.raises(ValueError, match="lacks column"):
        qg_rank_map(VECTORS, LABELS, qg.drop(columns="role"))
    with pytest.raises(ValueError, match="shape mismatch"):
        qg_rank_map((["d/a/1"], np.zeros((2, 2))), LABELS, qg)
