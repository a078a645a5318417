"""The report stage: tables from fixture metrics JSONs (hand-checked), formats, determinism, errors naming files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline3d.report import build, collect, plots
from pipeline3d.report.tables import Column, MeanStd, Table, latex_escape, read_csv
from pipeline3d.stages import report as report_stage

OUTPUTS = [f"tables/{n}.{e}" for n in build.TABLE_NAMES for e in ("md", "csv", "tex")] + [
    "tables/summary.md",
    "plots/fewshot_accuracy.png",
    "plots/recall_at_k.png",
]


# ------------------------------------------------------------------------------------------------- fixtures
def _write(path: Path, obj: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return str(path)


def finetune_json(root: Path, dataset: str, method: str, k: int, seed: int, acc: float, macc: float) -> str:
    # finetune_classifier's layout: identity at the top level, test.accuracy / test.mean_class_accuracy
    return _write(
        root / "finetune" / dataset / method / f"k{k}" / f"s{seed}" / "metrics.json",
        {
            "dataset": dataset,
            "method": method,
            "k": k,
            "seed": seed,
            "git": "x",
            "seconds": 1.0,
            "test": {"accuracy": acc, "mean_class_accuracy": macc, "n": 10},
            "protocol": {"dataset": dataset, "seed": seed},
        },
    )


def _ucpr_metrics(r1: float) -> dict:
    return {
        "R@1": r1,
        "R@5": r1 + 0.2,
        "R@10": r1 + 0.3,
        "MRR": r1 + 0.1,
        "mean_rank": 3.0,
        "median_rank": 2.0,
        "category_mAP": 0.5,
        "category_R@1": 0.6,
    }


def ucpr_json(root: Path, method: str, query: str, gallery: str, r1: float) -> str:
    # eval_ucpr's layout: per-ablation metrics under "ablations", the random-ranking expectation under "chance"
    return _write(
        root / "ucpr" / "demo" / method / f"{query}--{gallery}.json",
        {
            "dataset": "demo",
            "method": method,
            "query": query,
            "gallery": gallery,
            "n_shapes": 40,
            "ablations": {"point_xyz": _ucpr_metrics(r1 / 2), "none": _ucpr_metrics(r1)},
            "chance": _ucpr_metrics(0.025),
            "protocol": {"dataset": "demo"},
            "git": "x",
            "seconds": 1.0,
        },
    )


def cpac_json(root: Path, method: str, context: str, mae: float) -> str:
    # eval_cpac's layout: identity in protocol; metrics.<predictor>.pooled.{mae, rmse, iou}
    def block(m: float, iou: float | None) -> dict:
        return {
            "pooled": {"mae": m, "rmse": m * 1.5, "bias": 0.0, "iou": iou, "n_points": 640},
            "per_shape": {},
            "per_class": {},
        }

    return _write(
        root / "cpac" / "demo" / method / f"{context}.json",
        {
            "protocol": {"dataset": "demo", "method": method, "context_backend": context, "cpac": {"tau": 0.03}},
            "tau": 0.03,
            "n_eval_shapes": 10,
            "metrics": {"probe": block(mae, 0.4), "constant": block(0.2, None), "context_nn": block(0.1, 0.3)},
            "git": "x",
            "seconds": 1.0,
        },
    )


def _qg(values: list[float]) -> dict:
    per_split = [{"split_id": i, "rank@1": v, "rank@5": 1.0, "rank@10": 1.0, "mAP": v} for i, v in enumerate(values)]
    return {
        "rank@1": sum(values) / len(values),
        "rank@5": 1.0,
        "rank@10": 1.0,
        "mAP": sum(values) / len(values),
        "std": {},
        "per_split": per_split,
        "n_splits": len(values),
    }


def heads_jsons(root: Path) -> tuple[str, str]:
    metric = _write(
        root / "heads" / "metric" / "shape" / "demo" / "nepa" / "metrics.json",
        {"space": "shape/demo/nepa", "test_qg": {"projected": _qg([0.5, 0.7, 0.9]), "raw": _qg([0.4])}},
    )
    retrieval = _write(
        root / "heads" / "retrieval" / "demo" / "nepa" / "metrics.json",
        {
            "dataset": "demo",
            "method": "nepa",
            "head": _qg([0.6, 0.8]),
            "raw": _qg([0.5, 0.5]),
            "head_pre_bn": _qg([0.55, 0.65]),
            "descriptor_raw": {**_qg([0.3, 0.4]), "descriptor": {}},
        },
    )
    return metric, retrieval


def align_json(root: Path) -> str:
    return _write(
        root / "align" / "demo" / "nepa" / "metrics.json",
        {
            "dataset": "demo",
            "method": "nepa",
            "fold": 1,
            "test": {
                "t2m": {"R@1": 0.1, "R@3": 0.3, "R@5": 0.5, "R@10": 0.9},
                "m2t": {"R@1": 0.2, "R@3": 0.4, "R@5": 0.6, "R@10": 1.0},
            },
        },
    )


def all_inputs(root: Path) -> dict[str, list[str]]:
    finetune = [finetune_json(root, "demo", "scratch", 1, s, a, a - 0.1) for s, a in enumerate([0.2, 0.4, 0.6])]
    finetune += [finetune_json(root, "demo", "nepa", 1, s, a, a) for s, a in enumerate([0.5, 0.7])]
    finetune += [finetune_json(root, "demo", "nepa", 0, 0, 0.9, 0.85)]
    metric, retrieval = heads_jsons(root)
    return {
        "finetune": finetune,
        "ucpr": [ucpr_json(root, "nepa", "mesh", "udfgrid", 0.3), ucpr_json(root, "mae", "mesh", "udfgrid", 0.4)],
        "cpac": [cpac_json(root, "nepa", "pointcloud_noray", 0.05)],
        "metric_heads": [metric],
        "retrieval_heads": [retrieval],
        "align": [align_json(root)],
    }


PARAMS = {
    "datasets": ["demo"],
    "title": "Demo results",
    "stage_version": 1,
    "finetune": {"datasets": ["demo"], "methods": ["scratch", "nepa"], "k": [0, 1], "seeds": [0, 1, 2]},
}


def run_stage(inputs: dict, out: Path, params: dict = PARAMS) -> int:
    return report_stage.main(
        [
            "--params",
            json.dumps(params),
            "--inputs",
            json.dumps(inputs),
            "--out-dir",
            str(out / "tables"),
            "--plots-dir",
            str(out / "plots"),
        ]
    )


# ------------------------------------------------------------------------------------------------- tables
def test_mean_std_is_the_sample_std_and_undefined_for_one_run() -> None:
    ms = MeanStd.of([0.2, 0.4, 0.6])
    assert ms.n == 3 and ms.mean == pytest.approx(0.4) and ms.std == pytest.approx(0.2)  # ddof=1 (ddof=0: 0.163)
    assert MeanStd.of([0.7]).std is None


def test_table_formats_and_csv_round_trip() -> None:
    table = Table(
        "t",
        "T",
        [Column("name", "Name"), Column("acc", "acc", "r", mean_std=True), Column("x", "x", "r")],
        group_key="dataset",
    )
    table.add(["a_b", MeanStd.of([0.2, 0.4, 0.6]), 1 / 3], group="d1")
    table.add(["c", MeanStd.of([0.5]), None], group="d1")
    md = table.to_markdown()
    assert "| a_b | 0.400 ± 0.200 | 0.333 |" in md and "| c | 0.500 ± - | - |" in md and "## d1" in md
    rows = read_csv(table.to_csv())
    assert list(rows[0]) == ["dataset", "name", "acc_mean", "acc_std", "acc_n", "x"]
    assert rows[0]["dataset"] == "d1" and rows[0]["name"] == "a_b"
    assert float(rows[0]["acc_mean"]) == pytest.approx(0.4, abs=1e-6)
    assert float(rows[0]["acc_std"]) == pytest.approx(0.2, abs=1e-6) and rows[0]["acc_n"] == "3"
    assert float(rows[0]["x"]) == pytest.approx(1 / 3, abs=1e-6)
    assert rows[1]["acc_std"] == "" and rows[1]["x"] == ""
    tex = table.to_latex()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "a\\_b & 0.400 $\\pm$ 0.200 & 0.333 \\\\" in tex
    with pytest.raises(ValueError, match="acc"):
        table.add(["d", 0.5, None])  # a plain float in a mean ± std column


def test_latex_escaping() -> None:
    assert latex_escape("my_method 50% #1 & {x}") == r"my\_method 50\% \#1 \& \{x\}"
    assert latex_escape("a\\b ~^") == r"a\textbackslash{}b \textasciitilde{}\textasciicircum{}"
    assert latex_escape("mesh -> udfgrid") == r"mesh $\rightarrow$ udfgrid"


def test_empty_table_says_no_results_in_every_format() -> None:
    table = Table("t", "T", [Column("acc", "acc", mean_std=True)], group_key="dataset")
    assert "_no results_" in table.to_markdown()
    assert table.to_csv() == "dataset,acc_mean,acc_std,acc_n\n"
    assert "no results" in table.to_latex()


# ------------------------------------------------------------------------------------------------- collect + build
def test_fewshot_table_hand_checked(tmp_path: Path) -> None:
    report = build.build(all_inputs(tmp_path), PARAMS)
    md = report.tables["fewshot"].to_markdown()
    # scratch K=1: 0.2, 0.4, 0.6 -> 0.400 ± 0.200 (ddof=1); mean class 0.1, 0.3, 0.5
    assert "| scratch | 1 | 3 | 0.400 ± 0.200 | 0.300 ± 0.200 |" in md
    # nepa K=1: 0.5, 0.7 -> 0.600 ± 0.141 (sqrt(0.02)); nepa K=full single seed -> "± -"
    assert "| nepa | 1 | 2 | 0.600 ± 0.141 | 0.600 ± 0.141 |" in md
    assert "| nepa | full | 1 | 0.900 ± - | 0.850 ± - |" in md
    # sorted: K ascending with full last, then methods in config order
    assert md.index("| scratch | 1 |") < md.index("| nepa | 1 |") < md.index("| nepa | full |")
    assert "- K=1: **nepa** 0.600 ± 0.141" in md and "- K=full: **nepa** 0.900 ± -" in md
    # configured jobs without a file are listed, not hidden
    assert "Missing configured jobs (" in md and "scratch K=full seed 0" in md and "nepa K=1 seed 2" in md


def test_ucpr_cpac_retrieval_text3d_tables(tmp_path: Path) -> None:
    report = build.build(all_inputs(tmp_path), PARAMS)
    ucpr = read_csv(report.tables["ucpr"].to_csv())
    assert [(r["method"], r["ablation"]) for r in ucpr] == [
        ("mae", "none"),
        ("mae", "point_xyz"),
        ("mae", "chance"),
        ("nepa", "none"),
        ("nepa", "point_xyz"),
        ("nepa", "chance"),
    ]
    assert ucpr[3]["pair"] == "mesh -> udfgrid" and float(ucpr[3]["R@1"]) == pytest.approx(0.3)
    assert float(ucpr[3]["MRR"]) == pytest.approx(0.4) and float(ucpr[3]["category_mAP"]) == pytest.approx(0.5)
    assert ucpr[3]["n_query"] == "40"

    cpac = read_csv(report.tables["cpac"].to_csv())
    assert [r["predictor"] for r in cpac] == ["ridge probe", "baseline: constant", "baseline: context_nn"]
    assert float(cpac[0]["MAE"]) == pytest.approx(0.05) and float(cpac[0]["RMSE"]) == pytest.approx(0.075)
    assert cpac[1]["IoU"] == "" and cpac[0]["context"] == "pointcloud_noray" and cpac[0]["n_shapes"] == "10"
    cpac_md = report.tables["cpac"].to_markdown()
    assert (
        "IoU@0.030" in cpac_md
        and "| nepa | pointcloud_noray | baseline: constant | 10 | 0.200 | 0.300 | - |" in cpac_md
    )

    retrieval = read_csv(report.tables["retrieval"].to_csv())
    assert [(r["head"], r["embedding"]) for r in retrieval] == [
        ("metric", "metric head"),
        ("metric", "raw"),
        ("retrieval", "retrieval head"),
        ("retrieval", "retrieval head (pre-BN)"),
        ("retrieval", "raw"),
        ("retrieval", "descriptor (raw)"),
    ]
    # metric head rank@1 over splits 0.5, 0.7, 0.9: mean 0.7, sample std 0.2 (the JSON's own std is ddof=0)
    assert float(retrieval[0]["rank@1_mean"]) == pytest.approx(0.7) and retrieval[0]["n_split"] == "3"
    assert float(retrieval[0]["rank@1_std"]) == pytest.approx(0.2)
    assert retrieval[1]["rank@1_std"] == ""  # one split: undefined
    assert "| metric | shape/nepa | raw | 1 | 0.400 ± - |" in report.tables["retrieval"].to_markdown()
    # the hand-crafted floor (shape-distribution descriptors, no embedding) over the same splits
    assert float(retrieval[5]["mAP_mean"]) == pytest.approx(0.35) and retrieval[5]["model"] == "nepa"

    text3d = read_csv(report.tables["text3d"].to_csv())
    assert [r["direction"] for r in text3d] == ["text -> mesh", "mesh -> text"]
    assert [float(text3d[1][f"R@{k}"]) for k in (1, 3, 5, 10)] == pytest.approx([0.2, 0.4, 0.6, 1.0])
    assert "text $\\rightarrow$ mesh" in report.tables["text3d"].to_latex()


def test_ucpr_results_layout_is_read_too(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "u.json",
        {"dataset": "d", "method": "m", "query": "mesh", "gallery": "udfgrid", "results": {"none": _ucpr_metrics(0.1)}},
    )
    rows = collect.ucpr_rows([path])
    assert rows["ablation"].tolist() == ["none"] and rows["R@10"].tolist() == pytest.approx([0.4])


# ------------------------------------------------------------------------------------------------- stage
def test_stage_writes_every_output_and_reruns_byte_identical(tmp_path: Path) -> None:
    inputs = all_inputs(tmp_path / "in")
    assert run_stage(inputs, tmp_path / "a") == 0
    shuffled = {name: list(reversed(paths)) for name, paths in inputs.items()}  # file order must not matter
    assert run_stage(shuffled, tmp_path / "b") == 0
    for rel in OUTPUTS:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    summary = (tmp_path / "a" / "tables" / "summary.md").read_text()
    assert summary.startswith("# Demo results\n")
    assert "![recall_at_k](../plots/recall_at_k.png)" in summary and "[ucpr.tex](ucpr.tex)" in summary
    assert "| scratch | 1 | 3 | 0.400 ± 0.200 |" in summary  # tables are embedded
    assert (tmp_path / "a" / "plots" / "fewshot_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage_with_no_inputs_still_writes_every_file(tmp_path: Path) -> None:
    empty = {name: [] for name in build.INPUT_NAMES}
    assert run_stage(empty, tmp_path) == 0
    for rel in OUTPUTS:
        assert (tmp_path / rel).stat().st_size > 0, rel
    assert "_no results_" in (tmp_path / "tables" / "ucpr.md").read_text()
    assert (tmp_path / "tables" / "fewshot.csv").read_text().startswith("dataset,method,k,n_seed,test_acc_mean")


def test_malformed_or_incomplete_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    inputs = all_inputs(tmp_path / "in")
    bad = tmp_path / "in" / "broken_ucpr.json"
    bad.write_text('{"dataset": "demo", ')
    with pytest.raises(ValueError, match="broken_ucpr.json"):
        collect.ucpr_rows([bad])
    assert run_stage(inputs | {"ucpr": [*inputs["ucpr"], str(bad)]}, tmp_path / "out") == 1
    assert not (tmp_path / "out" / "tables" / "summary.md").exists()  # nothing half-written

    lacking = _write(tmp_path / "align_lacking.json", {"dataset": "d", "method": "m", "test": {"t2m": {"R@1": 0.1}}})
    with pytest.raises(ValueError, match=r"align_lacking.json.*test\.t2m\.R@3"):
        collect.text3d_rows([lacking])
    not_object = _write(tmp_path / "list.json", {})
    Path(not_object).write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json.*object"):
        collect.cpac_rows([not_object])


def test_duplicate_finetune_job_is_an_error(tmp_path: Path) -> None:
    a = finetune_json(tmp_path / "a", "demo", "nepa", 1, 0, 0.5, 0.5)
    b = finetune_json(tmp_path / "b", "demo", "nepa", 1, 0, 0.6, 0.6)
    with pytest.raises(ValueError, match="share a job"):
        build.build({"finetune": [a, b]}, PARAMS)


# ------------------------------------------------------------------------------------------------- plots
def test_plots_are_deterministic_and_depend_on_the_data(tmp_path: Path) -> None:
    report = build.build(all_inputs(tmp_path), PARAMS)
    again = build.build(all_inputs(tmp_path), PARAMS)
    assert report.plots == again.plots
    summary = build.fewshot_summary(collect_fewshot(tmp_path), ["scratch", "nepa"])
    changed = summary.assign(acc_mean=summary["acc_mean"] * 0.5)
    assert plots.fewshot_accuracy_png(summary, ["scratch", "nepa"]) == report.plots["fewshot_accuracy"]
    assert plots.fewshot_accuracy_png(changed, ["scratch", "nepa"]) != report.plots["fewshot_accuracy"]
    empty = plots.recall_at_k_png(collect.text3d_rows([]), collect.ucpr_rows([]))
    assert empty[:8] == b"\x89PNG\r\n\x1a\n" and empty != report.plots["recall_at_k"]
    assert b"Software" not in report.plots["recall_at_k"] and b"matplotlib" not in report.plots["recall_at_k"]


def collect_fewshot(root: Path):
    from pipeline3d.report.fewshot_table import load_rows

    return load_rows(all_inputs(root)["finetune"], require_dataset=True)


def test_nan_split_values_are_left_out(tmp_path: Path) -> None:
    block = _qg([0.5, 0.7])
    block["per_split"][1]["mAP"] = math.nan
    path = _write(tmp_path / "r.json", {"dataset": "d", "method": "m", "head": block, "raw": _qg([0.5])})
    rows = collect.retrieval_rows([], [path])
    assert rows.iloc[0]["mAP"] == [0.5] and rows.iloc[0]["rank@1"] == [0.5, 0.7]


def test_metrics_jsonl_has_every_file_once_without_timings(tmp_path):
    from pipeline3d.report.collect import metrics_lines

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"seconds": 3.2, "test": {"accuracy": 0.5}}))
    b.write_text(json.dumps({"seconds": 9.9, "R@1": 0.1}))
    text = metrics_lines({"ucpr": [str(b)], "finetune": [str(a)]})
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["kind"] for r in records] == ["finetune", "ucpr"]
    assert records[0]["metrics"] == {"test": {"accuracy": 0.5}} and records[1]["metrics"] == {"R@1": 0.1}
    a.write_text(json.dumps({"seconds": 7.0, "test": {"accuracy": 0.5}}))  # another run's timing only
    assert metrics_lines({"ucpr": [str(b)], "finetune": [str(a)]}) == text


def test_promptsg_variants_are_rows_of_the_retrieval_table_beside_their_floors(tmp_path: Path) -> None:
    full = _write(
        tmp_path / "full.json",
        {
            "dataset": "d",
            "method": "point_mae",
            "variant": "full",
            "head": _qg([0.8, 0.6]),
            "raw": _qg([0.3, 0.5]),
            "descriptor_raw": _qg([0.2, 0.2]),
        },
    )
    bare = _write(
        tmp_path / "bare.json",
        {"dataset": "d", "method": "point_mae", "variant": "no_interaction", "head": _qg([0.4, 0.4])},
    )
    rows = collect.retrieval_rows([], [], [full, bare])
    got = {(r["model"], r["embedding"]): r["mAP"] for r in rows.to_dict("records")}
    assert got == {
        ("point_mae/full", "PromptSG"): [0.8, 0.6],
        ("point_mae/full", "raw"): [0.3, 0.5],
        ("point_mae/full", "descriptor (raw)"): [0.2, 0.2],
        ("point_mae/no_interaction", "PromptSG"): [0.4, 0.4],
    }
    assert set(rows["head"]) == {"promptsg"}
    table = build.retrieval_table(rows)
    assert table.n_rows == 4
    with pytest.raises(ValueError, match="variant"):
        collect.retrieval_rows(
            [], [], [_write(tmp_path / "anon.json", {"dataset": "d", "method": "m", "head": _qg([0.1])})]
        )
