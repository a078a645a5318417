"""Exact kNN (blocked products + float64 certification) and the difficulty bands built on it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.neighbors import BallTree

from pipeline3d.embed import knn as knn_module
from pipeline3d.embed.difficulty import (
    band_table,
    difficulty_bands,
    parse_bands,
    read_difficulty_metadata,
    write_difficulty,
)
from pipeline3d.embed.knn import Neighbours, knn, search
from pipeline3d.rng import rng_for


def _embeddings(n: int, d: int, key: str) -> np.ndarray:
    return rng_for(0, "test_knn", key).standard_normal((n, d)).astype(np.float32)


def _brute(x: np.ndarray, k: int, metric: str, identity=None, queries=None):
    """Reference: full float64 score matrix (self and equal identities masked), ordered by (score, index).

    Elementwise products, so exact copies of a vector get bit-identical scores and tie on the index.
    """
    db = x.astype(np.float64)
    q = db if queries is None else queries.astype(np.float64)
    if identity is None and queries is None:
        identity = (np.arange(len(db)), np.arange(len(db)))
    if metric == "cosine":
        s = (q[:, None, :] * db[None]).sum(-1) / np.outer(np.linalg.norm(q, axis=1), np.linalg.norm(db, axis=1))
    else:
        s = -np.sqrt(((q[:, None, :] - db[None]) ** 2).sum(-1))
    if identity is not None:
        q_ids, db_ids = identity
        s[np.asarray(q_ids)[:, None] == np.asarray(db_ids)[None, :]] = -np.inf
    cols = np.broadcast_to(np.arange(db.shape[0]), s.shape)
    order = np.lexsort((cols, -s), axis=-1)[:, :k]
    return order, np.take_along_axis(s, order, axis=1)


def _same_sets(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(np.sort(a, axis=1), np.sort(b, axis=1))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_matches_balltree(metric):
    x = _embeddings(600, 24, metric)
    k = 15
    ours = knn(x, k, metric=metric, block_size=64, db_block_size=256)
    data = x.astype(np.float64)
    if metric == "cosine":  # BallTree has no cosine: euclidean on unit vectors ranks identically
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
    dist, idx = BallTree(data).query(data, k=k + 1)
    assert (idx[:, 0] == np.arange(len(x))).all()  # self first, then the neighbours
    assert _same_sets(ours.rows, idx[:, 1:])
    expected = 1.0 - dist[:, 1:] ** 2 / 2 if metric == "cosine" else dist[:, 1:]
    np.testing.assert_allclose(ours.scores, expected, atol=1e-9)
    assert ours.scores.dtype == np.float64 and ours.rows.dtype == np.int64
    step = np.diff(ours.scores, axis=1)
    assert (step <= 0).all() if metric == "cosine" else (step >= 0).all()


def test_identity_exclusion_and_exact_order():
    x = _embeddings(400, 12, "identity")
    identity = np.array([f"shape{i // 4}" for i in range(400)])  # four views per shape
    ours = knn(x, 9, identity=identity, block_size=33, db_block_size=70)
    assert (identity[ours.rows] != identity[:, None]).all()
    rows, scores = _brute(x, 9, "cosine", (identity, identity))
    assert np.array_equal(ours.rows, rows)
    np.testing.assert_allclose(ours.scores, scores, atol=1e-12)
    # large identity groups (e.g. class labels: 100 items each) take the dense code-comparison mask
    classes = np.arange(400) % 3
    dense = knn(x, 9, identity=classes, block_size=64, db_block_size=150)
    assert np.array_equal(dense.rows, _brute(x, 9, "cosine", (classes, classes))[0])
    # a subset of query rows gives exactly those rows of the full answer
    subset = np.array([399, 0, 17, 17])
    part = knn(x, 9, identity=identity, rows=subset)
    assert np.array_equal(part.rows, ours.rows[subset]) and np.array_equal(part.query_rows, subset)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_block_size_does_not_change_the_result(metric, monkeypatch):
    monkeypatch.setattr(knn_module, "_FAISS_QUERIES", 1)  # faiss calls of block_size queries, however few
    x = _embeddings(300, 20, "blocks" + metric)
    identity = rng_for(0, "test_knn", "ids").integers(0, 120, size=300)
    small = knn(x, 11, metric=metric, identity=identity, block_size=7, db_block_size=61)
    large = knn(x, 11, metric=metric, identity=identity, block_size=1000, db_block_size=100000)
    assert np.array_equal(small.rows, large.rows)
    assert np.array_equal(small.scores, large.scores)  # bit for bit
    # every row as an explicit query: the general tiling instead of the symmetric self-search, same bits
    general = knn(x, 11, metric=metric, identity=identity, rows=np.arange(300), block_size=50, db_block_size=77)
    assert np.array_equal(general.rows, small.rows) and np.array_equal(general.scores, small.scores)


def test_ties_break_by_index_and_uncertified_rows_are_rescanned():
    base = _embeddings(30, 8, "dups")
    picks = rng_for(0, "test_knn", "picks").integers(0, 30, size=300)
    x = base[picks]  # ~10 exact copies of each vector: the margin cannot separate them
    ours = knn(x, 12, block_size=50, db_block_size=64)
    assert ours.n_rescanned > 0
    rows, _ = _brute(x, 12, "cosine")
    assert np.array_equal(ours.rows, rows)
    # with no margin nearly every row needs the float64 rescan, and the answer stays the same
    forced = knn(x, 12, block_size=50, db_block_size=64, margin=0)
    assert forced.n_rescanned > ours.n_rescanned and np.array_equal(forced.rows, rows)
    other_tiles = knn(x, 12, block_size=7, db_block_size=1000)
    assert np.array_equal(other_tiles.rows, rows) and np.array_equal(other_tiles.scores, ours.scores)


def test_fewer_admissible_items_than_k_are_padded():
    x = _embeddings(10, 4, "small")
    identity = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 2])
    ours = knn(x, 5, identity=identity)
    assert ours.counts.tolist() == [3] * 7 + [5, 5, 5]
    assert (ours.rows[:7, 3:] == -1).all() and np.isnan(ours.scores[:7, 3:]).all()
    assert set(ours.rows[0, :3]) == {7, 8, 9}
    tiny = knn(x[:3], 5)  # database smaller than k
    assert tiny.counts.tolist() == [2, 2, 2] and (tiny.rows[:, 2:] == -1).all()


def test_search_queries_against_a_separate_database():
    db = _embeddings(300, 16, "db")
    queries = _embeddings(40, 16, "queries")
    q_ids, db_ids = np.arange(40) % 7, np.arange(300) % 7
    ours = search(queries, db, 6, query_identity=q_ids, database_identity=db_ids, block_size=9, db_block_size=50)
    rows, scores = _brute(db, 6, "cosine", (q_ids, db_ids), queries=queries)
    assert np.array_equal(ours.rows, rows) and ours.query_rows is None
    np.testing.assert_allclose(ours.scores, scores, atol=1e-12)
    plain = search(queries, db, 6, metric="euclidean")
    assert np.array_equal(plain.rows, _brute(db, 6, "euclidean", queries=queries)[0])


def _tied(n: int, d: int, key: str, distinct: int) -> np.ndarray:
    """Small integers, each of ``distinct`` vectors repeated: many exactly tied scores, and float64 scores that are
    exact (the brute-force reference and the search compute the same bits)."""
    base = rng_for(0, "test_knn", key).integers(-2, 3, size=(distinct, d)).astype(np.float32)
    base[np.abs(base).sum(axis=1) == 0, 0] = 1.0  # no zero rows (cosine)
    return base[rng_for(0, "test_knn", key + "picks").integers(0, distinct, size=n)]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_faiss_candidates_give_the_brute_force_float64_answer_with_ties_and_identities(metric, monkeypatch):
    monkeypatch.setattr(knn_module, "_FAISS_QUERIES", 1)  # several blocks of 64 queries on both paths
    x = _tied(720, 12, "faiss" + metric, distinct=120)
    pick = rng_for(0, "test_knn", "faiss-ids")
    # one identity larger than the over-fetch limit (faiss searches around its rows; its queries are reordered),
    # scattered among small groups of 1-5 rows (extra candidates, then dropped)
    identity = np.where(pick.random(720) < 0.45, -1, pick.integers(0, 150, size=720))
    assert (identity == -1).sum() > knn_module._OVERFETCH_MAX
    ours = knn(x, 20, metric=metric, identity=identity, block_size=64)
    rows, scores = _brute(x, 20, metric, (identity, identity))
    assert 0 < ours.n_rescanned < 720  # the ties defeat the margin for some queries, not all
    np.testing.assert_array_equal(ours.rows, rows)  # ties by row, exactly as brute force
    np.testing.assert_array_equal(ours.scores, scores if metric == "cosine" else -scores)  # bit for bit
    assert (identity[ours.rows] != identity[:, None]).all()
    # a subset of queries, in any order, gets those rows of the answer
    subset = np.array([719, 3, 3, 400])
    part = knn(x, 20, metric=metric, identity=identity, rows=subset)
    assert np.array_equal(part.rows, rows[subset]) and np.array_equal(part.scores, ours.scores[subset])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_search_excludes_a_large_identity_exactly(metric):
    db, queries = _tied(600, 10, "around-db", distinct=150), _tied(90, 10, "around-q", distinct=30)
    db_ids = np.where(np.arange(600) % 2 == 0, "big", np.arange(600).astype(str))  # 300 rows of one identity
    q_ids = np.where(np.arange(90) % 3 == 0, "big", (np.arange(90) * 7).astype(str))  # and some absent ones
    ours = search(queries, db, 15, metric=metric, query_identity=q_ids, database_identity=db_ids, block_size=16)
    rows, scores = _brute(db, 15, metric, (q_ids, db_ids), queries=queries)
    np.testing.assert_array_equal(ours.rows, rows)
    np.testing.assert_array_equal(ours.scores, scores if metric == "cosine" else -scores)
    assert (db_ids[ours.rows[::3]] != "big").all()


def test_faiss_uses_the_jobs_thread_count(monkeypatch):
    import faiss
    import torch

    seen, real_knn = [], faiss.knn
    monkeypatch.setattr(
        faiss, "knn", lambda *a, **kw: (seen.append(faiss.omp_get_max_threads()), real_knn(*a, **kw))[1]
    )
    before, previous = faiss.omp_get_max_threads(), torch.get_num_threads()
    torch.set_num_threads(1)  # what a stage does with its --threads
    try:
        knn(_embeddings(200, 8, "threads"), 5)
    finally:
        torch.set_num_threads(previous)
    assert seen and set(seen) == {1}
    assert faiss.omp_get_max_threads() == before  # restored afterwards


def test_bad_inputs_are_named():
    x = _embeddings(20, 4, "bad")
    x[13] = 0.0
    with pytest.raises(ValueError, match="all-zero database row 13"):
        knn(x, 3)
    assert knn(x, 3, metric="euclidean").counts.min() == 3  # zero vectors are fine for euclidean
    x[5, 2] = np.nan
    with pytest.raises(ValueError, match="row 5 has a NaN"):
        knn(x, 3, metric="euclidean")
    with pytest.raises(ValueError, match="expected 20 values"):
        knn(_embeddings(20, 4, "ok"), 3, identity=[1, 2])
    with pytest.raises(ValueError, match="metric"):
        knn(_embeddings(20, 4, "ok"), 3, metric="manhattan")


# -- difficulty bands -----------------------------------------------------------------------------------------


RANK_BANDS = {"by": "rank", "bands": {"hard": [1, 3], "medium": [4, 8], "easy": [9, 12]}}


def test_rank_bands_partition_every_anchors_neighbours():
    x = _embeddings(80, 10, "bands")
    ids = np.array([f"ds/c{i % 5}/item{i:03d}" for i in range(80)])
    spec = parse_bands(RANK_BANDS)
    table = difficulty_bands(x, ids, spec, identity=[i // 2 for i in range(80)], block_size=16)
    assert list(table.columns) == ["anchor_id", "band", "neighbour_id", "rank", "similarity"]
    assert len(table) == 80 * 12  # every rank 1..12 of every anchor in exactly one band
    assert not table.duplicated(["anchor_id", "neighbour_id"]).any()
    expected_band = np.repeat(["hard", "medium", "easy"], [3, 5, 4])
    for anchor, rows in table.groupby("anchor_id", sort=False):
        assert rows["rank"].tolist() == list(range(1, 13))
        assert rows["band"].tolist() == expected_band.tolist()
        assert anchor not in set(rows["neighbour_id"])
    ranked = knn(x, 12, identity=[i // 2 for i in range(80)])
    assert table["neighbour_id"].tolist() == ids[ranked.rows.ravel()].tolist()
    # a gap (ranks 1-2 skipped) drops those neighbours and keeps the rest
    gapped = band_table(ranked, ids, parse_bands({"by": "rank", "bands": {"hard": [3, 5], "easy": [10, 12]}}))
    assert sorted(set(gapped["rank"])) == [3, 4, 5, 10, 11, 12]


def test_quantile_bands_are_ordered_by_similarity_and_keep_ties_together():
    rows = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    scores = np.array([[0.9, 0.8, 0.8], [0.9, 0.7, 0.5], [0.8, 0.7, 0.6], [0.8, 0.5, 0.6]])
    neighbours = Neighbours(rows, scores, "cosine", np.arange(4), 0)
    spec = parse_bands({"by": "quantile", "bands": {"hard": [0.0, 0.25], "medium": [0.25, 0.75], "easy": [0.75, 1.0]}})
    table = band_table(neighbours, ["a", "b", "c", "d"], spec)
    assert len(table) == 12  # contiguous quantile bands cover every pair
    by_band = table.groupby("band")["similarity"]
    assert by_band.min()["hard"] >= by_band.max()["medium"] and by_band.min()["medium"] >= by_band.max()["easy"]
    # p = fraction of pairs strictly more similar: 0.9 -> 0, 0.8 -> 2/12 (hard, all four of them, although a
    # position cut at 3/12 would split them); 0.7 -> 6/12, 0.6 -> 8/12 (medium); 0.5 -> 10/12 (easy)
    band_of = dict(zip(table["similarity"], table["band"]))
    assert band_of == {0.9: "hard", 0.8: "hard", 0.7: "medium", 0.6: "medium", 0.5: "easy"}
    # euclidean: smaller distance is harder
    far = band_table(Neighbours(rows, 1.0 - scores, "euclidean", np.arange(4), 0), list("abcd"), spec)
    assert far["band"].tolist() == table["band"].tolist() and "distance" in far.columns


def test_band_specs_are_validated():
    with pytest.raises(ValueError, match="overlap"):
        parse_bands({"by": "rank", "bands": {"hard": [1, 5], "easy": [5, 9]}})
    with pytest.raises(ValueError, match="overlap"):
        parse_bands({"by": "quantile", "bands": {"easy": [0.4, 1.0], "hard": [0.0, 0.5]}})
    # the order of the mapping does not matter (the rules pass bands with sorted keys): hardest first by bounds
    spec = parse_bands({"by": "rank", "bands": {"easy": [16, 30], "hard": [1, 5], "medium": [6, 15]}})
    assert spec.names == ["hard", "medium", "easy"]
    with pytest.raises(ValueError, match="'by'"):
        parse_bands({"by": "similarity", "bands": {"hard": [1, 2]}})
    with pytest.raises(ValueError, match="ranks must be integers"):
        parse_bands({"by": "rank", "bands": {"hard": [0, 2]}})
    with pytest.raises(ValueError, match="need k"):
        difficulty_bands(
            _embeddings(5, 3, "k"), list("abcde"), parse_bands({"by": "quantile", "bands": {"all": [0, 1]}})
        )
    with pytest.raises(ValueError, match="unique"):
        difficulty_bands(_embeddings(5, 3, "k"), list("abcda"), parse_bands(RANK_BANDS))


def test_difficulty_parquet_round_trip(tmp_path):
    x = _embeddings(30, 6, "parquet")
    ids = [f"demo/c/{i:02d}" for i in range(30)]
    spec = parse_bands(RANK_BANDS)
    table = difficulty_bands(x, ids, spec)
    path = tmp_path / "difficulty" / "bands.parquet"
    write_difficulty(path, table, spec, "cosine", 12, extra={"embeddings": "shapes.parquet"})
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, table)
    meta = read_difficulty_metadata(path)
    assert meta == {"bands": spec.to_json(), "metric": "cosine", "k": 12, "embeddings": "shapes.parquet"}
    first = path.read_bytes()
    write_difficulty(path, difficulty_bands(x, ids, spec), spec, "cosine", 12, extra={"embeddings": "shapes.parquet"})
    assert path.read_bytes() == first  # same inputs, same bytes
    assert pq.read_schema(path).field("rank").type == "int32"
    assert [p.name for p in path.parent.iterdir()] == ["bands.parquet"]  # no temp files left behind
