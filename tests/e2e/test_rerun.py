"""Local end-to-end run of the (reduced) demo and Snakemake's rerun semantics on it.

One full `snakemake --cores 2 all` in a tmp copy of the repo, then each test changes one thing and checks exactly
which jobs Snakemake plans (and, for some, runs). Every test leaves the copy up to date for the next one.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from smk import (
    VENV_BIN,
    copy_repo,
    embedding_jobs,
    eval_jobs,
    job_counts,
    planned_jobs,
    read_config,
    rewrite_tar_without_last_item,
    run_snakemake,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.e2e

STAGE_RULES = [
    "make_demo_data",
    "ingest_dataset",
    "build_cache_shard",
    "index_cache",
    "fingerprint_dataset",
    "make_splits",
    "materialize_unpaired",
    "pretrain_encoder",
    "finetune_classifier",
    "tabulate_fewshot",
    "finetune_episode",
    "tabulate_episodes",
    "embed_image",
    "embed_text",
    "embed_shape",
    "difficulty_bands",
    "tune_metric_head",
    "train_metric_head",
    "align_text3d",
    "submit_text3d",
    "train_retrieval_head",
    "train_promptsg",
    "eval_ucpr",
    "eval_cpac",
    "report",
]


def model_jobs(config: dict) -> dict[str, int]:
    ft = config["finetune"]
    settings = ft.get("episodes", {}).get("settings", [])
    folds = ft.get("episodes", {}).get("folds") or range(config["splits"].get("episodes", {}).get("folds", 10))
    jobs = {
        "pretrain_encoder": len(config["pretrain"]["methods"]),
        "finetune_classifier": len(ft["datasets"]) * len(ft["methods"]) * len(ft["k"]) * len(ft["seeds"]),
        "tabulate_fewshot": len(ft["datasets"]),
    }
    if settings:
        jobs |= {
            "finetune_episode": len(ft["datasets"]) * len(ft["methods"]) * len(settings) * len(folds),
            "tabulate_episodes": len(ft["datasets"]),
        }
    return jobs


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    write_config(workdir, tiny_config())
    result = run_snakemake(workdir, "--cores", "2", "all", timeout=900)
    assert result.returncode == 0, result.tail(8000)
    return workdir


def assert_up_to_date(workdir: Path) -> None:
    result = run_snakemake(workdir, "-n", "all")
    assert result.returncode == 0, result.tail()
    assert job_counts(result.output) == {}, result.tail(6000)


def planned(workdir: Path) -> dict[str, int]:
    result = run_snakemake(workdir, "-n", "all")
    assert result.returncode == 0, result.tail()
    return job_counts(result.output)


def run(workdir: Path) -> dict[str, int]:
    """Run for real; return the jobs it executed (from its own job stats)."""
    result = run_snakemake(workdir, "--cores", "2", "all", timeout=900)
    assert result.returncode == 0, result.tail(8000)
    return job_counts(result.output)


def mtimes(workdir: Path, pattern: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(workdir.glob(pattern))}


def test_full_run_writes_outputs_logs_and_benchmarks(demo: Path) -> None:
    results = demo / "results"
    for dataset in ("demo-mesh", "demo-scan", "demo-img"):
        assert (results / "ingest" / dataset / "manifest.parquet").stat().st_size > 0
        for name in ("ttv", "kfold", "unpaired", "fewshot", "qg", "episodes"):
            assert (results / "splits" / dataset / f"{name}.parquet").stat().st_size > 0
    for usplit in ("train_mesh", "train_pc", "train_udf", "eval"):
        assert (results / "splits" / "demo-mesh" / "unpaired" / f"{usplit}.h5").stat().st_size > 0
    for rule in STAGE_RULES:
        logs = list((results / "logs" / rule).rglob("*.log"))
        benchmarks = list((results / "benchmarks" / rule).rglob("*.tsv"))
        assert logs and all(log.stat().st_size > 0 for log in logs), rule
        assert benchmarks and all("max_rss" in b.read_text() for b in benchmarks), rule


def test_noop_rerun_does_nothing(demo: Path) -> None:
    result = run_snakemake(demo, "--cores", "2", "all")
    assert result.returncode == 0, result.tail()
    assert "Nothing to be done" in result.output


def test_reordered_config_keys_rerun_nothing(demo: Path) -> None:
    config_file = demo / "config" / "config.yaml"
    original = config_file.read_text()
    config = read_config(demo)
    write_config(demo, {key: config[key] for key in reversed(list(config))})
    assert config_file.read_text() != original
    try:
        assert_up_to_date(demo)
    finally:
        config_file.write_text(original)


def test_switching_wandb_logging_reruns_nothing(demo: Path) -> None:
    """The logging section reaches the training jobs through the environment, never their params or code."""
    config_file = demo / "config" / "config.yaml"
    original = config_file.read_text()
    config = read_config(demo)
    config["logging"]["wandb"]["enabled"] = not config["logging"]["wandb"]["enabled"]
    write_config(demo, config)
    try:
        assert_up_to_date(demo)
    finally:
        config_file.write_text(original)


def test_param_change_reruns_the_stage_and_its_dependents_only(demo: Path) -> None:
    upstream = (
        mtimes(demo, "results/ingest/*/*")
        | mtimes(demo, "results/cache/*/*")
        | mtimes(demo, "results/fingerprints/*/*")
    )
    kfold_files = mtimes(demo, "results/splits/*/kfold.parquet")
    config = read_config(demo)
    config["splits"]["kfold"] += 1
    write_config(demo, config)

    # only the kfold family of each dataset and the text-3D folds trained on it: the other families (and the models
    # reading them) do not depend on it
    align = config["align_text3d"]
    expected = {
        "make_splits": 3,
        "align_text3d": len(align["datasets"]) * len(align["folds"]),
        "submit_text3d": len(align["datasets"]),
        "report": 1,
        "all": 1,
    }
    assert planned(demo) == expected
    assert run(demo) == expected
    assert_up_to_date(demo)
    assert (
        mtimes(demo, "results/ingest/*/*")
        | mtimes(demo, "results/cache/*/*")
        | mtimes(demo, "results/fingerprints/*/*")
        == upstream
    )
    assert all(mtime != kfold_files[path] for path, mtime in mtimes(demo, "results/splits/*/kfold.parquet").items())


def test_stage_version_bump_reruns_the_stage_and_its_dependents_only(demo: Path) -> None:
    versions = demo / "src" / "pipeline3d" / "versions.py"
    original = versions.read_text()
    bumped = re.sub(r'("fingerprint_dataset":\s*)(\d+)', lambda m: f"{m.group(1)}{int(m.group(2)) + 1}", original)
    assert bumped != original
    versions.write_text(bumped)
    try:
        result = run_snakemake(demo, "-n", "all")
        assert result.returncode == 0, result.tail()
        # everything downstream of the fingerprints, models included (their inputs will be rewritten)
        config = read_config(demo)
        # the embeddings of images and depth views read no split: they stay
        after_splits = {
            rule: n for rule, n in embedding_jobs(config).items() if rule not in ("embed_image", "embed_text")
        }
        assert job_counts(result.output) == {
            "fingerprint_dataset": 3,
            "make_splits": 18,
            "materialize_unpaired": 4,
            **model_jobs(config),
            **after_splits,
            **eval_jobs(config),
            "all": 1,
        }
        fingerprint_jobs = [job for job in planned_jobs(result.output) if job.rule == "fingerprint_dataset"]
        assert all("Params have changed" in job.fields["reason"] for job in fingerprint_jobs)
    finally:
        versions.write_text(original)
    assert_up_to_date(demo)


def test_raw_content_change_reruns_the_dependent_chain_only(demo: Path) -> None:
    images = demo / "resources" / "demo" / "demo_images.tar"
    images.touch()  # a newer mtime with the same bytes is not a change (Snakemake 9 compares checksums)
    assert_up_to_date(demo)

    others = mtimes(demo, "results/ingest/demo-mesh/*") | mtimes(demo, "results/splits/demo-scan/*")
    rewrite_tar_without_last_item(images)
    # demo-img's chain: its images' and captions' embeddings and bands, its PromptSG jobs and frozen-vector head, and
    # the text-3D alignment reading its captions
    config = read_config(demo)
    expected = {
        "ingest_dataset": 1,
        "fingerprint_dataset": 1,
        "make_splits": 6,
        "embed_image": 1,
        "embed_text": 1,
        "difficulty_bands": 1,
        "train_retrieval_head": int("demo-img" in config["retrieval_head"]["datasets"]),
        "train_promptsg": len(config["promptsg"]["variants"]) * ("demo-img" in config["promptsg"]["datasets"]),
        "align_text3d": len(config["align_text3d"]["folds"]),
        "submit_text3d": 1,
        "report": 1,
        "all": 1,
    }
    expected = {rule: n for rule, n in expected.items() if n}
    result = run_snakemake(demo, "-n", "all")
    assert job_counts(result.output) == expected, result.tail()
    assert expected["train_promptsg"] and expected["train_retrieval_head"]  # the e2e config trains on demo-img
    assert all(
        "dataset=demo-img" in job.fields.get("wildcards", "")
        for job in planned_jobs(result.output)
        if job.rule not in ("all", "align_text3d", "submit_text3d", "report")
    )
    assert run(demo) == expected
    assert_up_to_date(demo)
    assert mtimes(demo, "results/ingest/demo-mesh/*") | mtimes(demo, "results/splits/demo-scan/*") == others


def test_flipped_byte_in_a_shard_is_named_moved_aside_by_its_reader_and_rebuilt_byte_for_byte(demo: Path) -> None:
    """A damaged shard is never trusted, and a dry run touches nothing: the stage that reads the shards
    (index_cache) names the file and the array that fails its checksum and moves the file aside; the next
    invocation rebuilds only that shard and what reads it, byte for byte as before."""
    import h5py

    from pipeline3d.io.shards import validate_shard

    shard = demo / "results" / "cache" / "demo-mesh" / "shard-0000.h5"
    good = shard.read_bytes()
    with h5py.File(shard, "r") as h5:  # the middle of one row's exact distances, as in the experiment
        info = h5["pool_dist_mesh"].id.get_chunk_info_by_coord((1, 0))
    damaged = bytearray(good)
    damaged[info.byte_offset + info.size // 2] ^= 0x5A
    shard.write_bytes(bytes(damaged))
    plan = run_snakemake(demo, "-n", "all")
    assert plan.returncode == 0, plan.tail()
    assert shard.read_bytes() == bytes(damaged) and not (shard.parent / "shard-0000.h5.invalid").exists()

    failed = run_snakemake(demo, "--cores", "2", "all", timeout=900)
    assert failed.returncode != 0
    log = (demo / "results" / "logs" / "index_cache" / "demo-mesh.log").read_text()
    assert "shard-0000.h5: invalid cache shard: damaged: array pool_dist_mesh" in log, log
    assert "run the workflow again to rebuild it" in log
    assert not shard.exists() and (shard.parent / "shard-0000.h5.invalid").exists()

    result = run_snakemake(demo, "--cores", "2", "all", timeout=900)
    assert result.returncode == 0, result.tail(8000)
    ran = job_counts(result.output)
    assert ran.get("build_cache_shard") == 1 and ran.get("index_cache") == 1, result.tail()
    assert "make_demo_data" not in ran and "ingest_dataset" not in ran
    assert validate_shard(shard, dataset="demo-mesh", shard=0, deep=True) is None
    assert shard.read_bytes() == good
    assert_up_to_date(demo)


def test_verify_finds_damaged_outputs_and_the_rerun_restores_them_byte_for_byte(demo: Path) -> None:
    """An item store, an embeddings table and a trained head, each with one flipped byte: `pipeline3d verify` names
    exactly those, `--move-aside` hands them to the next run, which rebuilds each one as it was."""
    results = demo / "results"
    targets = [
        results / "ingest" / "demo-img" / "items.h5",
        sorted((results / "embeddings" / "shape").rglob("*.parquet"))[0],
        sorted((results / "heads" / "metric").rglob("head.safetensors"))[0],
    ]
    before = {path: result_content(path) for path in run_results(demo)}
    for path in targets:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x5A
        path.write_bytes(bytes(data))
    verify = [str(VENV_BIN / "pipeline3d"), "verify", "results"]
    found = subprocess.run(verify, cwd=demo, capture_output=True, text=True, timeout=600)
    assert found.returncode == 1, found.stdout + found.stderr
    named = sorted(
        line.split(": ")[0].removeprefix("DAMAGED ") for line in found.stdout.splitlines() if line.startswith("DAMAGED")
    )
    assert named == sorted(str(p.relative_to(demo)) for p in targets), found.stdout
    moved = subprocess.run([*verify, "--move-aside"], cwd=demo, capture_output=True, text=True, timeout=600)
    assert moved.returncode == 1 and not any(p.exists() for p in targets)
    # the command it prints: `all` plus the moved files (an output no job reads is rebuilt only when asked for)
    command = moved.stdout.strip().splitlines()[-1].split()
    assert command[:4] == ["snakemake", "--cores", "all", "all"], moved.stdout
    assert sorted(command[4:]) == sorted(str(p.relative_to(demo)) for p in targets)

    result = run_snakemake(demo, "--cores", "2", *command[3:], timeout=900)
    assert result.returncode == 0, result.tail(8000)
    assert subprocess.run(verify, cwd=demo, capture_output=True, timeout=600).returncode == 0
    changed = [str(p.relative_to(demo)) for p, data in before.items() if p.exists() and result_content(p) != data]
    assert not changed and all(result_content(p) == before[p] for p in targets), changed
    assert_up_to_date(demo)


def test_fewshot_jobs_select_on_a_k_shot_validation_set_and_test_on_every_test_shape(demo: Path) -> None:
    import json

    import pandas as pd

    splits = demo / "results" / "splits" / "demo-mesh"
    ttv = pd.read_parquet(splits / "ttv.parquet")
    n_classes = ttv["label"].nunique()
    config = read_config(demo)
    for method in config["finetune"]["methods"]:
        one_shot = json.loads((demo / "results/finetune/demo-mesh" / method / "k1/s0/metrics.json").read_text())
        assert one_shot["train_shapes"] == n_classes and one_shot["val_shapes"] <= n_classes  # K=1: 1 label per class
        assert one_shot["test"]["n"] == int((ttv["split"] == "test").sum())
        assert set(one_shot["test"]["per_class_accuracy"]) == set(one_shot["class_names"])
        full = json.loads((demo / "results/finetune/demo-mesh" / method / "k0/s0/metrics.json").read_text())
        assert full["train_shapes"] == int((ttv["split"] == "train").sum())
        assert full["protocol"]["method"] == method and full["protocol"]["k"] == 0
    table = (demo / "results" / "tables" / "fewshot" / "demo-mesh.md").read_text()
    assert all(f"| {method} |" in table for method in config["finetune"]["methods"])
    episodes = (demo / "results" / "tables" / "episodes" / "demo-mesh.md").read_text()
    assert all(f"| {method} |" in episodes for method in config["finetune"]["methods"]), episodes
    assert "3w1s" in episodes


def test_embeddings_bands_heads_and_submission_come_out_of_all(demo: Path) -> None:
    import json

    import pandas as pd

    from pipeline3d.embed.vectors import read_vectors

    results, config = demo / "results", read_config(demo)
    for path in (results / "embeddings").rglob("*.parquet"):
        emb = read_vectors(path)
        assert len(emb.ids) > 0 and emb.metadata["weights_sha256"] and emb.metadata["preprocessing"], path
    shape = read_vectors(results / "embeddings" / "shape" / "demo-mesh" / "nepa.parquet")
    assert len(shape.ids) == len(pd.read_parquet(results / "cache" / "demo-mesh" / "index.parquet"))
    bands = pd.read_parquet(results / "difficulty" / f"{config['metric_head']['space']}.parquet")
    labels = pd.read_parquet(results / "ingest" / "demo-mesh" / "manifest.parquet").set_index("shape_id")["label"]
    assert (labels[bands["anchor_id"]].to_numpy() != labels[bands["neighbour_id"]].to_numpy()).all()  # negatives
    head = results / "heads" / "metric" / config["metric_head"]["space"]
    metrics = json.loads((head / "metrics.json").read_text())
    assert set(metrics["bandit"]["pulls"]) == set(config["difficulty"]["bands"])
    assert metrics["tuned"]  # the Optuna best trial's values were used
    assert (head / "head.safetensors").stat().st_size > 0 and json.loads((head / "head.json").read_text())
    retrieval = json.loads((results / "heads" / "retrieval" / "demo-mesh" / "nepa" / "metrics.json").read_text())
    assert {"rank@1", "rank@5", "rank@10", "mAP"} <= set(retrieval["head"])
    assert retrieval["head"]["n_splits"] == config["splits"]["query_gallery_splits"]
    folder = results / "align_text3d" / "demo-mesh" / "nepa"
    ttv = pd.read_parquet(results / "splits" / "demo-mesh" / "ttv.parquet")
    test_shapes = set(ttv.loc[ttv["split"] == "test", "shape_id"])
    mesh2text = pd.read_csv(folder / "submission_mesh2text.csv")
    assert set(mesh2text["query_id"]) == test_shapes
    text2mesh = pd.read_csv(folder / "submission_text2mesh.csv")
    ranked = text2mesh.filter(like="rank_").to_numpy().ravel()
    assert set(ranked) <= test_shapes and list(text2mesh.columns[:2]) == ["query_id", "query_text"]
    assert {"t2m", "m2t"} <= set(json.loads((folder / "metrics.json").read_text())["test"])


def test_report_tables_and_plots_and_a_self_contained_html(demo: Path) -> None:
    import json

    tables, plots = demo / "results" / "tables", demo / "results" / "plots"
    for name in ("fewshot", "ucpr", "cpac", "retrieval", "text3d"):
        for ext in ("md", "csv", "tex"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    fewshot = (tables / "fewshot.md").read_text()
    assert "n(seed)" in fewshot and "| nepa |" in fewshot and "no results" not in fewshot
    assert "no results" not in (tables / "ucpr.md").read_text() and "no results" not in (tables / "cpac.md").read_text()
    assert all((plots / f"{name}.png").read_bytes()[:4] == b"\x89PNG" for name in ("fewshot_accuracy", "recall_at_k"))
    kinds = {json.loads(line)["kind"] for line in (tables / "metrics.jsonl").read_text().splitlines()}
    assert kinds == {"finetune", "ucpr", "cpac", "metric_heads", "retrieval_heads", "promptsg", "align"}
    retrieval = (tables / "retrieval.md").read_text()
    assert "| promptsg | nepa/full | PromptSG |" in retrieval  # a shape dataset: the 3D encoder's tokens
    assert "| promptsg | vit-tiny/full | PromptSG |" in retrieval  # an image dataset: the image backbone's tokens
    assert "| retrieval | vit-tiny | retrieval head |" in retrieval  # and its frozen-vector baseline
    result = run_snakemake(demo, "--report", "report.html")
    assert result.returncode == 0, result.tail()
    html = (demo / "report.html").read_text(errors="replace")
    assert "fewshot.md" in html and "recall_at_k.png" in html


# What may differ between two runs of the same config: wall-clock fields, and the folders that record a run rather
# than its results (job logs, Snakemake's benchmark TSVs, the resumable training state). Optuna's study database
# stores trial timestamps; its best.json is compared.
TIMING_KEYS = frozenset({"seconds", "samples_per_s"})
RUN_RECORDS = ("logs", "benchmarks", "_state")


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def result_content(path: Path):
    """The file's bytes; for JSON / JSON lines, its parsed content without the wall-clock fields."""
    import json

    if path.suffix == ".json":
        return without_timings(json.loads(path.read_text()))
    if path.suffix == ".jsonl":
        return [without_timings(json.loads(line)) for line in path.read_text().splitlines()]
    return path.read_bytes()


def run_results(workdir: Path) -> list[Path]:
    results = workdir / "results"
    return [
        p
        for p in sorted(results.rglob("*"))
        if p.is_file() and p.suffix != ".sqlite" and p.relative_to(results).parts[0] not in RUN_RECORDS
    ]


def test_rerunning_everything_gives_byte_identical_results(demo: Path) -> None:
    """Same config -> same bytes: every job run again from the raw archives reproduces every result file (data,
    cache shards, splits, weights, embeddings, metrics, tables, plots), up to wall-clock fields."""
    # earlier tests edited the demo archives; regenerate them first, so both runs start from the same raw data
    restored = run_snakemake(demo, "--cores", "2", "--forcerun", "make_demo_data", "all", timeout=900)
    assert restored.returncode == 0, restored.tail(8000)
    before = {path: result_content(path) for path in run_results(demo)}
    assert any(p.suffix == ".h5" for p in before) and any(p.suffix == ".safetensors" for p in before)
    result = run_snakemake(demo, "--cores", "2", "--forceall", "all", timeout=900)
    assert result.returncode == 0, result.tail(8000)
    after = run_results(demo)
    assert sorted(after) == sorted(before)
    changed = [str(path.relative_to(demo)) for path, data in before.items() if result_content(path) != data]
    assert not changed, changed
