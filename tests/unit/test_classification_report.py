"""Classification metrics and the few-shot table, against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline3d.eval.classification import average_draws, classification_report, per_class_accuracy
from pipeline3d.report.fewshot_table import best_per_k, load_rows, summarize, to_markdown
from pipeline3d.stages import tabulate_fewshot


def test_draws_are_averaged_before_the_argmax() -> None:
    # draw 0 says class 0 weakly, draw 1 says class 1 strongly: the mean picks class 1 (a vote would tie)
    logits = np.array([[[0.6, 0.4], [0.0, 1.0]]])
    assert average_draws(logits).argmax(axis=1).tolist() == [1]
    report = classification_report(logits, np.array([1]), ["a", "b"])
    assert report["accuracy"] == 1.0 and report["draws"] == 2


def test_per_class_and_mean_class_accuracy() -> None:
    pred = np.array([0, 0, 1, 1, 1, 2])
    label = np.array([0, 1, 1, 1, 2, 2])
    per_class = per_class_accuracy(pred, label, ["a", "b", "c", "d"])
    assert per_class == {"a": 1.0, "b": 2 / 3, "c": 0.5, "d": None}
    logits = np.eye(4)[pred][:, None, :]
    report = classification_report(logits, label, ["a", "b", "c", "d"])
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["mean_class_accuracy"] == pytest.approx((1 + 2 / 3 + 0.5) / 3)


def write_metrics(folder: Path, method: str, k: int, seed: int, acc: float) -> Path:
    path = folder / f"{method}_k{k}_s{seed}.json"
    path.write_text(
        json.dumps(
            {"method": method, "k": k, "seed": seed, "test": {"accuracy": acc, "mean_class_accuracy": acc - 0.1}}
        )
    )
    return path


def test_table_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    paths = [write_metrics(tmp_path, "scratch", 1, s, a) for s, a in enumerate([0.2, 0.4, 0.6])]
    paths += [write_metrics(tmp_path, "nepa", 1, s, a) for s, a in enumerate([0.5, 0.7])]
    paths += [write_metrics(tmp_path, "nepa", 0, 0, 0.9)]
    table = summarize(load_rows(paths), ["scratch", "nepa"])
    row = table[(table.method == "scratch") & (table.k == 1)].iloc[0]
    assert row.n_seed == 3 and row.acc_mean == pytest.approx(0.4) and row.acc_std == pytest.approx(0.2)
    single = table[(table.method == "nepa") & (table.k == 0)].iloc[0]
    assert single.n_seed == 1 and single.acc_std == 0.0
    assert table[["method", "k"]].values.tolist() == [["scratch", 1], ["nepa", 1], ["nepa", 0]]  # full (K=0) last
    best = best_per_k(table)
    assert best.set_index("k")["method"].to_dict() == {0: "nepa", 1: "nepa"} and best["k"].tolist() == [1, 0]
    text = to_markdown(table, "t")
    assert "| scratch | 1 | 3 | 0.4000 ± 0.2000 |" in text and "| nepa | full | 1 |" in text


def test_stage_writes_identical_tables_twice_and_names_bad_files(tmp_path: Path) -> None:
    paths = [str(write_metrics(tmp_path, "scratch", 1, s, 0.1 * s)) for s in range(3)]
    outs = []
    for run in range(2):
        table, csv = tmp_path / f"t{run}.md", tmp_path / f"t{run}.csv"
        params = json.dumps({"dataset": "d", "methods": ["scratch"], "stage_version": 1})
        assert (
            tabulate_fewshot.main(["--params", params, "--metrics", *paths, "--table", str(table), "--csv", str(csv)])
            == 0
        )
        outs.append((table.read_bytes(), csv.read_bytes()))
    assert outs[0] == outs[1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "x"}))
    with pytest.raises(ValueError, match="bad.json"):
        load_rows([bad])
