"""N-way K-shot episodes: the split family (no leak between support and query, counts, reproducibility, skipped
settings), the episode job's wiring, the config cross-check and the episode table."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline3d.config_refs import episode_problems
from pipeline3d.data.selection import episode_classes, episode_labels
from pipeline3d.data.splits.build import build_splits
from pipeline3d.data.splits.episodes import parse_setting
from pipeline3d.jobs import episodes as episode_job
from pipeline3d.report.episodes_table import load_rows, summarize, to_csv, to_markdown
from pipeline3d.stages import make_splits, tabulate_episodes

# 9 classes from plenty to almost nothing, so some settings fill and others cannot
CLASS_SIZES = {0: 50, 1: 44, 2: 40, 3: 36, 4: 30, 5: 26, 6: 12, 7: 5, 8: 2}
EPISODES = {"settings": ["3w5s", "5w10s", "4w20s", "12w1s"], "folds": 6, "query_per_class": 4}
SPLITS = {"train": 0.7, "val": 0.1, "episodes": EPISODES}


def make_items(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest + duplicates: near-duplicate pairs and triples in every big class and one cross-class group."""
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
            "source_split": "",
        }
    )
    group = {sid: sid for sid in ids}
    for c in range(6):
        members = [s for s in ids if s.startswith(f"ds/c{c}/")]
        for start in range(0, 18, 6):
            for m in members[start + 1 : start + 3]:
                group[m] = members[start]
    group["ds/c1/m043"] = group["ds/c0/m049"] = "ds/c0/m049"
    dups = pd.DataFrame({"shape_id": ids, "group": [group[s] for s in ids]})
    dups["group"] = dups.groupby("group")["shape_id"].transform("min")
    return manifest.sample(frac=1.0, random_state=seed).reset_index(drop=True), dups


def items_of(manifest: pd.DataFrame, dups: pd.DataFrame) -> pd.DataFrame:
    items = manifest.merge(dups[["shape_id", "group"]], on="shape_id")
    cols = ["shape_id", "label", "label_name", "source_split", "group"]
    return items[cols].sort_values("shape_id", kind="stable").reset_index(drop=True)


def build(seed: int = 0, episodes: dict = EPISODES) -> tuple[dict, dict]:
    manifest, dups = make_items()
    params = {"seed": seed, "dataset": "ds", "source": {"kind": "mesh"}, "splits": {**SPLITS, "episodes": episodes}}
    return build_splits(items_of(manifest, dups), params, ["ttv", "episodes"])


def write_splits(tmp_path, seed: int = 0, name: str = "out") -> tuple:
    manifest, dups = make_items()
    manifest.to_parquet(tmp_path / f"{name}-manifest.parquet")
    dups.to_parquet(tmp_path / f"{name}-dups.parquet")
    params = {
        "seed": seed,
        "dataset": "ds",
        "source": {"kind": "mesh", "path": "x"},
        "splits": SPLITS,
        "stage_version": 1,
    }
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
            "--families",
            "ttv",
            "episodes",
        ]
    )
    assert rc == 0
    return tmp_path / f"{name}-manifest.parquet", tmp_path / name / "episodes.parquet", tmp_path / name / "ttv.parquet"


@pytest.fixture(scope="module")
def built():
    return build()


def test_parse_setting():
    assert parse_setting("5w10s") == (5, 10) and parse_setting("10w20s") == (10, 20)
    for bad in ("5w0s", "w10s", "5x10s", "05w10s", "5w10"):
        with pytest.raises(ValueError, match="<N>w<K>s"):
            parse_setting(bad)


def test_support_and_query_never_share_a_shape_or_a_group(built):
    tables, _ = built
    ttv, ep = tables["ttv"], tables["episodes"]
    group = make_items()[1].set_index("shape_id")["group"]
    split = ttv.set_index("shape_id")["split"]
    for (setting, fold), episode in ep.groupby(["setting", "fold"]):
        support, query = episode[episode["role"] == "support"], episode[episode["role"] == "query"]
        assert not set(support["shape_id"]) & set(query["shape_id"]), (setting, fold)
        assert not set(support["shape_id"].map(group)) & set(query["shape_id"].map(group)), (setting, fold)
        assert not episode["shape_id"].map(group).duplicated().any()  # one representative per group
        assert (support["shape_id"].map(split) == "train").all() and (query["shape_id"].map(split) == "test").all()


def test_n_classes_k_support_and_at_most_q_queries(built):
    tables, _ = built
    ttv, ep = tables["ttv"], tables["episodes"]
    test = ttv[ttv["split"] == "test"]
    group = make_items()[1].set_index("shape_id")["group"]
    test_groups = test.assign(group=test["shape_id"].map(group)).groupby("label")["group"].nunique()
    assert list(ep.columns) == ["setting", "way", "shot", "fold", "shape_id", "label", "episode_label", "role"]
    for (setting, fold), episode in ep.groupby(["setting", "fold"]):
        way, shot = parse_setting(setting)
        classes = sorted(episode["label"].unique())
        assert len(classes) == way
        # episode labels follow the sorted original labels
        assert dict(zip(episode["label"], episode["episode_label"])) == {c: i for i, c in enumerate(classes)}
        per_class = episode.groupby(["label", "role"]).size().unstack(fill_value=0)
        assert (per_class["support"] == shot).all(), (setting, fold)
        assert (per_class["query"] >= 1).all() and (per_class["query"] <= EPISODES["query_per_class"]).all()
        for c in classes:  # as many as the test split allows, up to query_per_class
            assert per_class.loc[c, "query"] == min(EPISODES["query_per_class"], test_groups[c])
    assert sorted(ep["fold"].unique()) == list(range(EPISODES["folds"]))


def test_settings_that_cannot_be_drawn_are_skipped_with_a_note(built, caplog):
    tables, meta = built
    notes = meta["episodes"]["notes"]
    drawn = set(tables["episodes"]["setting"])
    assert "12w1s" not in drawn and "skipped" in notes["12w1s"]  # 9 classes cannot make a 12-way episode
    assert "4w20s" not in drawn and "need 4" in notes["4w20s"]["skipped"]  # too few classes with 20 train groups
    assert {"3w5s", "5w10s"} <= drawn and "skipped" not in notes["3w5s"]
    assert notes["3w5s"]["query_per_class_max"] <= EPISODES["query_per_class"]
    with caplog.at_level(logging.INFO, logger="pipeline3d.make_splits"):
        build()
    assert "episodes 12w1s: skipped" in caplog.text and "episodes 4w20s: skipped" in caplog.text


def test_small_classes_are_never_drawn_for_a_large_shot(built):
    tables, _ = built
    ep = tables["episodes"]
    assert not set(ep.loc[ep["setting"] == "5w10s", "label"]) & {6, 7, 8}  # < 10 train groups each


def test_same_seed_same_table_other_fold_other_episode(built):
    again, _ = build()
    assert again["episodes"].equals(built[0]["episodes"])
    ep = built[0]["episodes"]
    draws = {
        fold: (frozenset(e["label"]), frozenset(e.loc[e["role"] == "support", "shape_id"]))
        for fold, e in ep[ep["setting"] == "3w5s"].groupby("fold")
    }
    assert len({classes for classes, _ in draws.values()}) > 1  # folds draw other classes
    assert len({support for _, support in draws.values()}) == len(draws)  # and other support sets
    other, _ = build(seed=1)
    assert not other["episodes"].equals(ep)


def test_a_new_setting_or_more_folds_keep_the_existing_episodes(built):
    grown, _ = build(episodes={**EPISODES, "settings": ["2w3s", *EPISODES["settings"]], "folds": 8})
    ep, new = built[0]["episodes"], grown["episodes"]
    old_part = new[new["setting"].isin(ep["setting"].unique()) & (new["fold"] < EPISODES["folds"])]
    assert old_part.reset_index(drop=True).equals(ep)


def test_stage_writes_the_notes_and_selection_reads_an_episode(tmp_path):
    _, episodes_path, _ = write_splits(tmp_path)
    meta = json.loads(pq.read_schema(episodes_path).metadata[b"pipeline3d.split"])
    assert meta["family"] == "episodes" and meta["splits"]["episodes"] == EPISODES
    assert "skipped" in meta["notes"]["12w1s"]
    support = episode_labels(episodes_path, setting="3w5s", fold=2, role="support")
    query = episode_labels(episodes_path, setting="3w5s", fold=2, role="query")
    assert len(support) == 15 and set(support.values()) == set(query.values()) == {0, 1, 2}
    classes = episode_classes(episodes_path, setting="3w5s", fold=2)
    assert classes == sorted(classes) and len(classes) == 3
    with pytest.raises(ValueError, match="no episode 12w1s"):
        episode_labels(episodes_path, setting="12w1s", fold=0, role="support")
    with pytest.raises(ValueError, match="unknown episode role"):
        episode_labels(episodes_path, setting="3w5s", fold=0, role="val")


def test_stage_output_is_byte_identical(tmp_path):
    a = write_splits(tmp_path, name="a")[1].read_bytes()
    assert write_splits(tmp_path, name="b")[1].read_bytes() == a


# ------------------------------------------------------------------------------------------------- job wiring
def job_files(tmp_path) -> dict:
    manifest, episodes_path, ttv = write_splits(tmp_path)
    return {"manifest": str(manifest), "episodes": str(episodes_path), "ttv": str(ttv), "index": "unused", "shards": []}


def test_job_trains_on_support_tests_on_query_with_episode_names(tmp_path, monkeypatch):
    files, seen = job_files(tmp_path), {}

    def fake_run_with_split(params, files, labels, names, state_dir, *, log):
        seen.update(params=params, labels=labels, names=names)
        return {
            "method": params["method"],
            "k": params["k"],
            "seed": params["seed"],
            "test": {"accuracy": 1.0, "mean_class_accuracy": 1.0, "n": len(labels["test"])},
        }, "result"

    monkeypatch.setattr(episode_job.finetune, "run_with_split", fake_run_with_split)
    params = {
        "seed": 0,
        "method": "scratch",
        "dataset": "ds",
        "setting": "3w5s",
        "fold": 1,
        "finetune": {"selection": "val"},
    }
    metrics, result = episode_job.run(params, files, tmp_path / "state", log=logging.getLogger("t"))
    assert result == "result"
    assert seen["params"]["key"] == "ds|scratch|3w5s|f1" and seen["params"]["k"] == 5
    assert seen["params"]["finetune"]["selection"] == "last" and seen["labels"]["val"] == {}
    assert seen["labels"]["train"] == episode_labels(files["episodes"], setting="3w5s", fold=1, role="support")
    classes = episode_classes(files["episodes"], setting="3w5s", fold=1)
    assert seen["names"] == [f"class{c}" for c in classes]
    assert metrics["setting"] == "3w5s" and (metrics["way"], metrics["shot"], metrics["fold"]) == (3, 5, 1)
    assert metrics["query_per_class"]["max"] <= 4 and metrics["query_per_class"]["target"] == 4


def test_job_of_a_skipped_setting_writes_why(tmp_path, monkeypatch):
    monkeypatch.setattr(episode_job.finetune, "run_with_split", lambda *a, **k: pytest.fail("trained"))
    params = {"seed": 0, "method": "scratch", "dataset": "ds", "setting": "12w1s", "fold": 0, "finetune": {}}
    metrics, result = episode_job.run(params, job_files(tmp_path), tmp_path / "s", log=logging.getLogger("t"))
    assert result is None and "need 12" in metrics["skipped"] and metrics["way"] == 12


def test_config_cross_check_names_the_key():
    split = {"settings": ["5w10s"], "folds": 10}
    assert episode_problems({"settings": ["5w10s"], "folds": [0, 9]}, split) == []
    assert episode_problems({"settings": [], "folds": None}, split) == []
    problems = episode_problems({"settings": ["5w10s", "10w10s"], "folds": [3, 10]}, split)
    assert len(problems) == 2
    assert problems[0].startswith("finetune.episodes.settings[1]: '10w10s'")
    assert problems[1].startswith("finetune.episodes.folds[1]: fold 10")


# ------------------------------------------------------------------------------------------------------- table
def write_metrics(tmp_path, method, setting, fold, acc, *, query=(20, 20), skipped=None) -> str:
    path = tmp_path / f"{method}-{setting}-f{fold}.json"
    metrics = {"dataset": "ds", "method": method, "setting": setting, "fold": fold}
    if skipped:
        metrics["skipped"] = skipped
    else:
        metrics |= {
            "test": {"accuracy": acc, "mean_class_accuracy": acc / 2},
            "query_per_class": {"min": query[0], "max": query[1], "target": 20},
        }
    path.write_text(json.dumps(metrics))
    return str(path)


@pytest.fixture
def metric_files(tmp_path):
    accs = {("pre", "5w10s"): [0.9, 0.8, 0.7], ("scratch", "5w10s"): [0.5, 0.6], ("pre", "10w10s"): [0.4]}
    paths = [
        write_metrics(tmp_path, m, s, f, a, query=(12, 20) if s == "10w10s" else (20, 20))
        for (m, s), values in accs.items()
        for f, a in enumerate(values)
    ]
    paths += [
        write_metrics(tmp_path, m, "10w20s", 0, 0, skipped="only 7 classes have >= 20 train groups")
        for m in ("pre", "scratch")
    ]
    return paths


def test_table_mean_sample_std_and_n(metric_files):
    table = summarize(load_rows(metric_files), ["scratch", "pre"])
    assert table[["method", "setting"]].values.tolist() == [
        ["scratch", "5w10s"],
        ["pre", "5w10s"],
        ["pre", "10w10s"],
        ["scratch", "10w20s"],
        ["pre", "10w20s"],
    ]
    pre = table.iloc[1]
    assert pre["n_fold"] == 3 and pre["acc_mean"] == pytest.approx(0.8)
    assert pre["acc_std"] == pytest.approx(np.std([0.9, 0.8, 0.7], ddof=1))
    assert pre["macc_mean"] == pytest.approx(0.4)
    assert table.iloc[2]["acc_std"] == 0.0 and table.iloc[2]["n_fold"] == 1  # one fold: std 0, n shown
    assert (table.iloc[2]["query_min"], table.iloc[2]["query_max"]) == (12, 20)
    assert table.iloc[3]["n_fold"] == 0 and "7 classes" in table.iloc[3]["skipped"]
    md = to_markdown(table, "T", 20)
    assert "| pre | 5w10s | 3 | 0.8000 ± 0.1000 | 0.4000 ± 0.0500 | 20–20 |" in md
    assert "| pre | 10w10s | 1 | 0.4000 ± 0.0000 | 0.2000 ± 0.0000 | 12–20 |" in md
    assert "- 10w20s: only 7 classes" in md and "protocol asks for 20" in md
    assert "- 5w10s: **pre** 0.8000 ± 0.1000 (n(fold)=3)" in md
    csv = to_csv(table).splitlines()
    assert csv[0] == ("method,setting,way,shot,n_fold,acc_mean,acc_std,macc_mean,macc_std,query_min,query_max,skipped")
    assert csv[2] == "pre,5w10s,5,10,3,0.800000,0.100000,0.400000,0.050000,20,20,"


def test_table_stage_is_byte_deterministic_and_order_free(tmp_path, metric_files):
    outs = []
    for name, paths in (("a", metric_files), ("b", metric_files[::-1])):
        table, csv = tmp_path / f"{name}.md", tmp_path / f"{name}.csv"
        params = json.dumps({"dataset": "ds", "methods": ["scratch", "pre"], "stage_version": 1})
        assert (
            tabulate_episodes.main(["--params", params, "--metrics", *paths, "--table", str(table), "--csv", str(csv)])
            == 0
        )
        outs.append((table.read_bytes(), csv.read_bytes()))
    assert outs[0] == outs[1] and outs[0][0].startswith(b"# N-way K-shot episodes: ds\n")


def test_descriptor_row_goes_to_the_descriptor_floor(tmp_path, monkeypatch):
    from pipeline3d.jobs import descriptor

    seen = {}

    def fake(params, files, labels, names, *, log):
        seen.update(params=params, labels=labels)
        return {"method": params["method"], "test": {"accuracy": 0.5, "mean_class_accuracy": 0.5}}

    monkeypatch.setattr(descriptor, "run_with_split", fake)
    monkeypatch.setattr(episode_job.finetune, "run_with_split", lambda *a, **k: pytest.fail("trained a network"))
    params = {
        "seed": 0,
        "method": "descriptor",
        "row_kind": "descriptor",
        "dataset": "ds",
        "setting": "5w10s",
        "fold": 3,
        "finetune": {},
    }
    metrics, result = episode_job.run(params, job_files(tmp_path), tmp_path / "s", log=logging.getLogger("t"))
    assert result is None and metrics["fold"] == 3 and seen["params"]["key"] == "ds|descriptor|5w10s|f3"
    assert seen["labels"]["val"] == {} and len(seen["labels"]["train"]) == 50
