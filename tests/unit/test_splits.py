"""Split families: stratification, source splits, near-duplicate groups, few-shot and query/gallery protocol,
determinism and independence from manifest row order."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline3d.data.splits import allocate
from pipeline3d.stages import make_splits

SPLITS_CFG = {
    "train": 0.8,
    "val": 0.1,
    "kfold": 5,
    "unpaired": {"train_mesh": 0.34, "train_pc": 0.33, "train_udf": 0.33},
    "fewshot_k": [1, 5],
    "fewshot_seeds": [0, 1],
    "query_gallery_splits": 3,
    "query_per_class": 2,
}
CLASS_SIZES = {0: 60, 1: 40, 2: 21, 3: 7, 4: 3, 5: 1}
FAMILIES = ("ttv", "kfold", "unpaired", "fewshot", "qg")


def make_dataset(with_source_split: bool = False, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest + duplicates with near-duplicate pairs/triples and one cross-class group."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for c, n in CLASS_SIZES.items():
        ids += [f"ds/c{c}/m{i:03d}" for i in range(n)]
        labels += [c] * n
    manifest = pd.DataFrame(
        {
            "shape_id": ids,
            "dataset": "ds",
            "kind": "mesh",
            "label": labels,
            "label_name": [f"class{c}" for c in labels],
            "source_split": (np.where(rng.random(len(ids)) < 0.75, "train", "test") if with_source_split else ""),
        }
    )
    group = {sid: sid for sid in ids}
    for c in (0, 1, 2):  # groups of 2 and 3 inside the big classes
        members = [s for s in ids if s.startswith(f"ds/c{c}/")]
        for start in range(0, 12, 6):
            for m in members[start + 1 : start + 3]:
                group[m] = members[start]
            group[members[start + 3]] = members[start + 4]
    group["ds/c1/m039"] = group["ds/c0/m050"] = "ds/c0/m050"  # a near-duplicate across classes
    dups = pd.DataFrame({"shape_id": ids, "group": [group[s] for s in ids]})
    canon = dups.groupby("group")["shape_id"].transform("min")  # canonical id = smallest member
    dups["group"] = canon
    dups["group_size"] = dups.groupby("group")["shape_id"].transform("size")
    return manifest, dups


def run(tmp_path, manifest, dups, seed=0, kind="mesh", cfg=SPLITS_CFG, name="out") -> dict[str, pd.DataFrame]:
    manifest.to_parquet(tmp_path / f"{name}-manifest.parquet")
    dups.to_parquet(tmp_path / f"{name}-dups.parquet")
    params = {"seed": seed, "dataset": "ds", "source": {"kind": kind, "path": "x"}, "splits": cfg, "stage_version": 1}
    rc = make_splits.main(
        [
            "--params",
            json.dumps(params),
            "--manifest",
            str(tmp_path / f"{name}-manifest.parquet"),
            "--duplicates",
            str(tmp_path / f"{name}-dups.parquet"),
            "--out-dir",
            str(tmp_path / name),
        ]
    )
    assert rc == 0
    return {f: pd.read_parquet(tmp_path / name / f"{f}.parquet") for f in FAMILIES}


def file_bytes(tmp_path, name):
    return {f: (tmp_path / name / f"{f}.parquet").read_bytes() for f in FAMILIES}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plain")
    manifest, dups = make_dataset()
    return run(tmp, manifest, dups), dups


@pytest.fixture(scope="module")
def sourced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sourced")
    manifest, dups = make_dataset(with_source_split=True)
    return run(tmp, manifest, dups), manifest, dups


# ------------------------------------------------------------------------------------------- allocation
def test_allocate_largest_remainder_and_no_empty_bucket():
    assert allocate(10, [0.34, 0.33, 0.33]).tolist() == [4, 3, 3]
    assert allocate(100, [0.8, 0.1, 0.1]).tolist() == [80, 10, 10]
    assert allocate(3, [0.8, 0.1, 0.1]).tolist() == [1, 1, 1]  # n >= buckets: none left empty
    assert allocate(2, [0.34, 0.33, 0.33]).tolist() == [1, 1, 0]  # n < buckets: the rule cannot apply
    assert allocate(1, [0.5, 0.5, 0.0]).tolist() == [1, 0, 0]
    assert allocate(5, [1.0, 0.0]).tolist() == [5, 0]  # a zero-weight bucket stays empty
    assert allocate(0, [1, 1]).tolist() == [0, 0]
    assert allocate(7, [1, 1, 1], tie_order=[2, 0, 1]).tolist() == [2, 2, 3]  # the tie goes where told
    for n in range(0, 40):
        assert allocate(n, [0.7, 0.2, 0.1]).sum() == n


# ------------------------------------------------------------------------------------------------- ttv
def test_ttv_is_stratified_by_class(plain):
    tables, _ = plain
    ttv = tables["ttv"]
    assert list(ttv.columns) == ["shape_id", "label", "split"]
    assert len(ttv) == sum(CLASS_SIZES.values()) and set(ttv["split"]) == {"train", "val", "test"}
    counts = pd.crosstab(ttv["label"], ttv["split"])
    for c, n in CLASS_SIZES.items():
        want = dict(zip(["train", "val", "test"], allocate(n, [0.8, 0.1, 0.1])))
        got = {s: int(counts.loc[c].get(s, 0)) for s in want}
        # groups (and the one cross-class group) can shift a class by at most a couple of items
        assert all(abs(got[s] - want[s]) <= 2 for s in want), (c, got, want)
    assert counts.loc[0, "train"] >= 46 and counts.loc[0, "test"] >= 4


def test_source_splits_are_respected(sourced):
    tables, manifest, dups = sourced
    ttv = tables["ttv"].merge(manifest[["shape_id", "source_split"]], on="shape_id")
    assert (ttv.loc[ttv["source_split"] == "test", "split"] == "test").all()  # the official test set is kept
    train_side = ttv[ttv["source_split"] == "train"]
    assert set(train_side["split"]) <= {"train", "val", "excluded"}
    # excluded = exactly the source-train members of groups that also have a source-test member
    g = ttv.merge(dups[["shape_id", "group"]], on="shape_id")
    has_test = g.groupby("group")["source_split"].transform(lambda s: (s == "test").any())
    assert ((g["split"] == "excluded") == ((g["source_split"] == "train") & has_test)).all()
    assert (g["split"] == "excluded").sum() >= 1
    # val is carved from source train: about 10% per class
    carved = train_side[train_side["split"] != "excluded"]
    val_share = (carved["split"] == "val").groupby(carved["label"]).mean()
    assert 0.05 <= val_share.loc[0] <= 0.15 and 0.05 <= val_share.loc[1] <= 0.15


@pytest.mark.parametrize("which", ["plain", "sourced"])
def test_near_duplicate_groups_never_straddle(which, plain, sourced):
    tables, dups = (plain[0], plain[1]) if which == "plain" else (sourced[0], sourced[2])
    group = dups.set_index("shape_id")["group"]
    for family, key, scope in [
        ("ttv", "split", []),
        ("kfold", "fold", []),
        ("unpaired", "split", []),
        ("fewshot", "role", ["k", "seed"]),
        ("qg", "role", ["split_id"]),
    ]:
        t = tables[family].assign(group=lambda d: d["shape_id"].map(group))
        if family == "ttv":  # "excluded" members are used nowhere (see test_source_splits_are_respected)
            t = t[t["split"] != "excluded"]
        values = t.groupby([*scope, "group"])[key].nunique()
        assert (values == 1).all(), (family, values[values > 1].head())
    ttv = tables["ttv"].assign(group=lambda d: d["shape_id"].map(group))
    # the cross-class group is placed whole
    assert ttv.loc[ttv["shape_id"].isin(["ds/c1/m039", "ds/c0/m050"]), "split"].nunique() == 1
    if which == "sourced":  # ... and no group has both a training and an evaluation member
        for g, s in ttv.groupby("group")["split"]:
            assert not ({"train", "val"} & set(s) and "test" in set(s)), g


# ----------------------------------------------------------------------------------------------- kfold
def test_kfold_covers_non_test_items_in_balanced_stratified_folds(plain):
    tables, _ = plain
    ttv, kfold = tables["ttv"], tables["kfold"]
    assert list(kfold.columns) == ["shape_id", "label", "fold"]
    assert set(kfold["shape_id"]) == set(ttv.loc[ttv["split"] != "test", "shape_id"])
    assert set(kfold["fold"]) == set(range(5))
    per = pd.crosstab(kfold["label"], kfold["fold"])
    assert per.loc[0].max() - per.loc[0].min() <= 3 and per.loc[1].max() - per.loc[1].min() <= 3
    sizes = kfold["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 3  # rounding ties do not all go to fold 0 (one extra item per class)


# -------------------------------------------------------------------------------------------- unpaired
def test_unpaired_fractions_and_no_empty_bucket(plain):
    tables, _ = plain
    ttv, up = tables["ttv"], tables["unpaired"]
    assert list(up.columns) == ["shape_id", "label", "split", "primitive"]
    merged = up.merge(ttv[["shape_id", "split"]], on="shape_id", suffixes=("", "_ttv"))
    assert (merged.loc[merged["split_ttv"] == "test", "split"] == "eval").all()
    assert (merged.loc[merged["split"] == "eval", "primitive"] == "all").all()
    prim = {"train_mesh": "mesh", "train_pc": "pc", "train_udf": "udf"}
    train = merged[merged["split"] != "eval"]
    assert (train["primitive"] == train["split"].map(prim)).all()
    counts = pd.crosstab(train["label"], train["split"])
    for c in counts.index:
        n = int(counts.loc[c].sum())
        want = allocate(n, [0.34, 0.33, 0.33])
        got = [int(counts.loc[c].get(s, 0)) for s in prim]
        assert max(abs(a - b) for a, b in zip(got, want)) <= 2, (c, got, want)
        if n >= 3 and c not in (0, 1, 2):  # singleton-only classes: the rule is exact
            assert min(got) >= 1 and got == want.tolist()


def test_unpaired_is_empty_with_a_note_for_non_mesh_datasets(tmp_path):
    manifest, dups = make_dataset()
    tables = run(tmp_path, manifest.assign(kind="pointcloud"), dups, kind="pointcloud")
    assert tables["unpaired"].empty and list(tables["unpaired"].columns) == ["shape_id", "label", "split", "primitive"]
    meta = json.loads(pq.read_schema(tmp_path / "out" / "unpaired.parquet").metadata[b"pipeline3d.split"])
    assert "pointcloud" in meta["note"] and "mesh" in meta["note"]
    assert len(tables["ttv"]) == sum(CLASS_SIZES.values())


# --------------------------------------------------------------------------------------------- fewshot
def groups_per_class(items: pd.DataFrame, group: pd.Series) -> pd.Series:
    """Groups per class, a group counting for its primary class (most frequent label, ties -> smallest)."""
    items = items.assign(group=items["shape_id"].map(group))
    primary = items.groupby("group")["label"].agg(lambda s: s.value_counts().sort_index().idxmax())
    return primary.value_counts()


def test_fewshot_counts_val_budget_and_disjointness(plain):
    tables, dups = plain
    ttv, fs = tables["ttv"], tables["fewshot"]
    assert list(fs.columns) == ["k", "seed", "shape_id", "label", "role"]
    train_ids = set(ttv.loc[ttv["split"] == "train", "shape_id"])
    assert set(fs["shape_id"]) <= train_ids
    group = dups.set_index("shape_id")["group"]
    n_groups = groups_per_class(ttv[ttv["split"] == "train"], group)
    for (k, seed), sub in fs.groupby(["k", "seed"]):
        for c in CLASS_SIZES:
            shots = sub[(sub["label"] == c) & (sub["role"] == "train")]
            val = sub[(sub["label"] == c) & (sub["role"] == "val")]
            avail = int(n_groups.get(c, 0))
            assert len(shots) == min(k, avail), (k, seed, c)
            assert len(val) == min(k, avail - len(shots)) <= k
            assert not set(shots["shape_id"]) & set(val["shape_id"])
    # nested: the K=1 shots are among the K=5 shots of the same seed
    for seed in (0, 1):
        k1 = set(fs[(fs["k"] == 1) & (fs["seed"] == seed) & (fs["role"] == "train")]["shape_id"])
        k5 = set(fs[(fs["k"] == 5) & (fs["seed"] == seed) & (fs["role"] == "train")]["shape_id"])
        assert k1 <= k5
    s0 = set(fs[(fs["k"] == 5) & (fs["seed"] == 0)]["shape_id"])
    s1 = set(fs[(fs["k"] == 5) & (fs["seed"] == 1)]["shape_id"])
    assert s0 != s1  # the few-shot seed changes the subset


# -------------------------------------------------------------------------------------------------- qg
def test_query_gallery_counts_and_no_overlap(plain):
    tables, dups = plain
    ttv, qg = tables["ttv"], tables["qg"]
    assert list(qg.columns) == ["split_id", "shape_id", "label", "role"]
    test = ttv[ttv["split"] == "test"]
    group = dups.set_index("shape_id")["group"]
    test_groups = groups_per_class(test, group)
    assert sorted(qg["split_id"].unique()) == [0, 1, 2]
    queries_seen = []
    for split_id, sub in qg.groupby("split_id"):
        q, g = sub[sub["role"] == "query"], sub[sub["role"] == "gallery"]
        assert not set(q["shape_id"]) & set(g["shape_id"])
        assert set(sub["shape_id"]) <= set(test["shape_id"])
        for c, n in test_groups.items():
            expected = 0 if n < 2 else min(2, n - 1)
            assert (q["label"] == c).sum() == expected, (split_id, c)
            if expected:
                assert (g["label"] == c).sum() >= 1  # every query has a same-class gallery item
        # nothing of a query's group is in the gallery
        assert not set(q["shape_id"].map(group)) & set(g["shape_id"].map(group))
        queries_seen.append(frozenset(q["shape_id"]))
    assert len(set(queries_seen)) > 1  # the splits differ


# ------------------------------------------------------------------------------------ reproducibility
def test_same_seed_same_bytes_other_seed_other_splits(tmp_path):
    manifest, dups = make_dataset()
    a = run(tmp_path, manifest, dups, seed=0, name="a")
    run(tmp_path, manifest, dups, seed=0, name="b")
    assert file_bytes(tmp_path, "a") == file_bytes(tmp_path, "b")
    c = run(tmp_path, manifest, dups, seed=1, name="c")
    for family, key in [("ttv", "split"), ("kfold", "fold"), ("unpaired", "split")]:
        assert not a[family][key].equals(c[family][key]), family
    assert not a["fewshot"].equals(c["fewshot"]) and not a["qg"].equals(c["qg"])


def test_manifest_row_order_does_not_matter(tmp_path):
    manifest, dups = make_dataset(with_source_split=True)
    run(tmp_path, manifest, dups, name="a")
    perm = np.random.default_rng(9).permutation(len(manifest))
    run(tmp_path, manifest.iloc[perm], dups.iloc[perm[::-1]], name="b")
    assert file_bytes(tmp_path, "a") == file_bytes(tmp_path, "b")


def test_a_new_item_does_not_move_the_others(tmp_path):
    manifest, dups = make_dataset()
    a = run(tmp_path, manifest, dups, name="a")["ttv"].set_index("shape_id")["split"]
    extra = pd.DataFrame(
        {
            "shape_id": ["ds/c0/zzz"],
            "dataset": "ds",
            "kind": "mesh",
            "label": 0,
            "label_name": "class0",
            "source_split": "",
        }
    )
    b = run(
        tmp_path,
        pd.concat([manifest, extra]),
        pd.concat([dups, pd.DataFrame({"shape_id": ["ds/c0/zzz"], "group": ["ds/c0/zzz"], "group_size": [1]})]),
        name="b",
    )["ttv"]
    b = b.set_index("shape_id")["split"]
    # a handful may move (per-class counts change by one), not a reshuffle
    assert (a != b.reindex(a.index)).sum() <= 3


# ------------------------------------------------------------------------------------------ bad inputs
def test_missing_columns_name_the_file(tmp_path, capsys):
    manifest, dups = make_dataset()
    manifest.drop(columns=["source_split"]).to_parquet(tmp_path / "m.parquet")
    dups.to_parquet(tmp_path / "d.parquet")
    params = {"seed": 0, "dataset": "ds", "source": {"kind": "mesh"}, "splits": SPLITS_CFG, "stage_version": 1}
    argv = [
        "--params",
        json.dumps(params),
        "--manifest",
        str(tmp_path / "m.parquet"),
        "--duplicates",
        str(tmp_path / "d.parquet"),
        "--out-dir",
        str(tmp_path / "o"),
    ]
    assert make_splits.main(argv) == 1
    err = capsys.readouterr().err
    assert "m.parquet: the manifest lacks columns ['source_split']" in err
    manifest.to_parquet(tmp_path / "m.parquet")
    dups.rename(columns={"group": "grp"}).to_parquet(tmp_path / "d.parquet")
    assert make_splits.main(argv) == 1
    assert "d.parquet: the duplicates table lacks columns ['group']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unfingerprinted_items_are_left_out_and_unknown_ones_refused(tmp_path, capsys):
    manifest, dups = make_dataset()
    tables = run(tmp_path, manifest, dups[dups["shape_id"] != "ds/c2/m020"], name="a")
    assert "ds/c2/m020" not in set(tables["ttv"]["shape_id"])
    assert "ds/c2/m020" in capsys.readouterr().err
    manifest[manifest["shape_id"] != "ds/c2/m020"].to_parquet(tmp_path / "m.parquet")
    dups.to_parquet(tmp_path / "d.parquet")
    params = {"seed": 0, "dataset": "ds", "source": {"kind": "mesh"}, "splits": SPLITS_CFG, "stage_version": 1}
    assert (
        make_splits.main(
            [
                "--params",
                json.dumps(params),
                "--manifest",
                str(tmp_path / "m.parquet"),
                "--duplicates",
                str(tmp_path / "d.parquet"),
                "--out-dir",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "not in" in capsys.readouterr().err
