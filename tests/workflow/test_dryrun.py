"""Dry-runs: the DAG the demo config produces, what every job declares, config typos, and DAG size at scale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from smk import (
    ROOT,
    embedding_jobs,
    eval_jobs,
    expected_big_counts,
    job_counts,
    planned_jobs,
    repo_config,
    run_snakemake,
    write_big_manifest_workdir,
)

TARGET_RULES = {"all", "data_all", "embed_all", "promptsg_all"}
UNPAIRED_SPLITS = 4  # train_mesh, train_pc, train_udf, eval
SPLIT_FAMILIES = 6  # ttv, kfold, unpaired, fewshot, qg, episodes: one job each


def expected_demo_counts(config: dict, target: str = "all") -> dict[str, int]:
    """The DAG's shape, stated per dataset kind: ingest + fingerprints + splits for every dataset, a cache (one job
    per shard + an index) for meshes and point clouds, physically unpaired stores for meshes."""
    kinds = [d["kind"] for d in config["datasets"].values()]
    cached = sum(k in ("mesh", "pointcloud") for k in kinds)
    counts = {
        "make_demo_data": int(config["demo"]["enabled"]),
        "ingest_dataset": len(kinds),
        "build_cache_shard": cached * config["cache"]["shards"],
        "index_cache": cached,
        "fingerprint_dataset": len(kinds),
        "make_splits": len(kinds) * SPLIT_FAMILIES,
        "materialize_unpaired": kinds.count("mesh") * UNPAIRED_SPLITS,
        target: 1,
    }
    if target == "all":  # the models: one pretrain per method, the few-shot grid, one table per dataset
        ft = config["finetune"]
        counts["pretrain_encoder"] = len(config["pretrain"]["methods"])
        counts["finetune_classifier"] = len(ft["datasets"]) * len(ft["methods"]) * len(ft["k"]) * len(ft["seeds"])
        counts["tabulate_fewshot"] = len(ft["datasets"])
        settings = ft.get("episodes", {}).get("settings", [])
        folds = ft.get("episodes", {}).get("folds") or range(config["splits"].get("episodes", {}).get("folds", 10))
        counts["finetune_episode"] = len(ft["datasets"]) * len(ft["methods"]) * len(settings) * len(folds)
        counts["tabulate_episodes"] = len(ft["datasets"]) if settings else 0
        counts |= embedding_jobs(config) | eval_jobs(config)
    return {rule: n for rule, n in counts.items() if n}


@pytest.mark.parametrize("target", ["all", "data_all"])
def test_demo_dry_run_job_counts(workdir: Path, target: str) -> None:
    result = run_snakemake(workdir, "-n", target)
    assert result.returncode == 0, result.tail()
    assert job_counts(result.output) == expected_demo_counts(repo_config(), target)


def test_default_target_is_all(workdir: Path) -> None:
    default = run_snakemake(workdir, "-n")
    assert default.returncode == 0, default.tail()
    assert job_counts(default.output) == expected_demo_counts(repo_config(), "all")


def test_every_job_declares_log_benchmark_and_resources(workdir: Path) -> None:
    result = run_snakemake(workdir, "-n", "all")
    assert result.returncode == 0, result.tail()
    jobs = [job for job in planned_jobs(result.output) if job.rule not in TARGET_RULES]
    assert jobs
    for job in jobs:
        assert job.fields.get("log", "").startswith(f"results/logs/{job.rule}/"), (job.rule, job.fields)
        assert job.fields.get("benchmark", "").startswith(f"results/benchmarks/{job.rule}/"), (job.rule, job.fields)
        resources = job.resources
        assert int(resources["mem_mb"]) > 0 and int(resources["runtime"]) > 0, (job.rule, resources)


# the rules that train or run a network (embedding, heads, submission inference): the rest is CPU work
TRAINING_RULES = {
    "pretrain_encoder",
    "finetune_classifier",
    "finetune_episode",
    "embed_image",
    "embed_text",
    "embed_shape",
    "tune_metric_head",
    "train_metric_head",
    "align_text3d",
    "submit_text3d",
    "train_retrieval_head",
    "train_promptsg",
    "eval_ucpr",
    "eval_cpac",
}


def test_training_jobs_ask_for_a_gpu_and_nothing_else_does(workdir: Path) -> None:
    """gpu=1 on every training job (SLURM routes them to GPU nodes; locally they run on the CPU)."""
    result = run_snakemake(workdir, "-n", "all")
    assert result.returncode == 0, result.tail()
    jobs = [job for job in planned_jobs(result.output) if job.rule not in TARGET_RULES]
    assert {job.rule for job in jobs} >= TRAINING_RULES
    for job in jobs:
        trains = job.rule in TRAINING_RULES and "method=descriptor" not in job.fields.get("wildcards", "")
        assert (job.resources.get("gpu") == "1") == trains, (job.rule, job.resources)


def rule_blocks() -> dict[str, str]:
    """Source text of every rule in the Snakefile and workflow/rules/*.smk."""
    blocks = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        heads = list(re.finditer(r"^( *)rule (\w+):", text, flags=re.M))
        for head, nxt in zip(heads, heads[1:] + [None]):
            blocks[head.group(2)] = text[head.start() : nxt.start() if nxt else len(text)]
    return blocks


def test_every_command_rule_sets_threads_explicitly() -> None:
    """Without `threads:` Snakemake pins OMP_NUM_THREADS=1 silently; every rule that runs something states it."""
    blocks = rule_blocks()
    assert set(blocks) >= {"make_demo_data", "ingest_dataset", "build_cache_shard", "make_splits"}
    commands = {name: text for name, text in blocks.items() if re.search(r"^\s+(shell|script|run):", text, re.M)}
    assert set(commands) == set(blocks) - TARGET_RULES
    missing = [name for name, text in commands.items() if not re.search(r"^\s+threads:", text, re.M)]
    assert not missing, f"rules without threads: {missing}"


def test_every_path_in_a_shell_command_is_quoted() -> None:
    """A checkout under a folder with a space must work: every value a command gets (the interpreter included)
    is `:q`-quoted; only the thread count and wildcards (constrained to safe characters) are left bare."""
    bare = {}
    for name, text in rule_blocks().items():
        shell = re.search(r"^    shell:\n((?:        .*\n)+)", text, re.M)
        if shell:
            fields = set(re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", shell.group(1)))
            unsafe = {f for f in fields if not f.endswith(":q") and f != "threads" and not f.startswith("wildcards.")}
            if unsafe:
                bare[name] = sorted(unsafe)
    assert not bare, f"unquoted values in shell commands: {bare}"


@pytest.mark.parametrize(
    "section, typo",
    [
        (None, "seeed"),  # top level
        ("splits", "kfolds"),  # inside a section
        ("cache", "pc_point"),
    ],
)
def test_config_typo_fails_naming_the_key(workdir: Path, section: str | None, typo: str) -> None:
    config = repo_config()
    (config[section] if section else config)[typo] = 3
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))

    result = run_snakemake(workdir, "-n", "all")
    assert result.returncode != 0
    assert re.search(rf"['\"]?{typo}['\"]? was unexpected|unknown key.*{typo}|{typo}.*unknown key", result.output), (
        result.tail()
    )


def test_dataset_entry_typo_fails_naming_the_key(workdir: Path) -> None:
    config = repo_config()
    config["datasets"]["demo-mesh"]["fromat"] = "shapenet"
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))

    result = run_snakemake(workdir, "-n", "all")
    assert result.returncode != 0
    assert "fromat" in result.output.split("Failed validating")[0], result.tail()


@pytest.mark.slow
@pytest.mark.parametrize("n_shapes, shards", [(50_000, 64), (500, 8)])
def test_dag_size_depends_on_shards_not_shapes(workdir: Path, n_shapes: int, shards: int) -> None:
    """A 50k-shape dataset (ingest done) plans one cache job per shard: Snakemake never sees individual shapes.
    Wall time of the 50k dry-run: benchmarks/bench_dryrun.py (BENCHMARKS.md)."""
    write_big_manifest_workdir(workdir, n_shapes=n_shapes, shards=shards)

    result = run_snakemake(workdir, "-n", "all")
    assert result.returncode == 0, result.tail()
    assert job_counts(result.output) == expected_big_counts(shards)


def test_paper_config_plans_the_seed_tables(workdir: Path) -> None:
    """config/paper_m1.yaml at full scale: the 75-job M1 few-shot table, the UCPR pairs and CPAC, one report."""
    config = yaml.safe_load((ROOT / "config" / "paper_m1.yaml").read_text())
    shapenet, scans = workdir / "raw" / "ShapeNetCore.v2", workdir / "raw" / "ScanObjectNN"
    shapenet.mkdir(parents=True)
    (scans / "main_split").mkdir(parents=True)
    for name in ("training_objectdataset.h5", "test_objectdataset.h5"):  # stand-ins: a dry run opens nothing
        (scans / "main_split" / name).write_bytes(b"")
    config["datasets"]["shapenet"]["path"] = str(shapenet)
    config["datasets"]["scanobjectnn"]["path"] = str(scans)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # plenty of cores: a dry run caps threads at --cores, a SLURM job gets what the rule declares
    result = run_snakemake(workdir, "-n", "--cores", "64", "all")
    assert result.returncode == 0, result.tail()
    shards, ucpr, cpac = config["cache"]["shards"], config["eval"]["ucpr"], config["eval"]["cpac"]
    assert job_counts(result.output) == {
        "ingest_dataset": 2,
        "build_cache_shard": 2 * shards,
        "index_cache": 2,
        "fingerprint_dataset": 2,
        "make_splits": 2 * SPLIT_FAMILIES,
        "materialize_unpaired": UNPAIRED_SPLITS,
        "pretrain_encoder": 4,
        "finetune_classifier": 75,
        "tabulate_fewshot": 1,
        "eval_ucpr": len(ucpr["methods"]) * 4,
        "eval_cpac": len(cpac["methods"]),
        "report": 1,
        "all": 1,
    }
    assert ucpr["max_files"] == 1000 and ucpr["query_seed"] != ucpr["gallery_seed"]
    # --cpus-per-task covers the DataLoader workers the config asks for, beside torch's threads
    planned = {
        (job.rule, job.threads)
        for job in planned_jobs(result.output)
        if job.rule in ("pretrain_encoder", "finetune_classifier", "eval_ucpr")
        and "/descriptor/" not in job.fields["output"]
    }
    assert planned == {
        ("pretrain_encoder", 2 + config["pretrain"]["num_workers"]),
        ("finetune_classifier", 1 + config["finetune"]["num_workers"]),
        ("eval_ucpr", 1 + ucpr["num_workers"]),
    }
    assert ucpr["num_workers"] > 0


def test_episode_settings_schedule_the_episode_jobs_and_table(workdir: Path) -> None:
    """finetune.episodes: one job per dataset x method x setting x fold (GPU, logged, benchmarked) and one table per
    dataset; the scratch jobs load no encoder. Without settings (the default) none of it is planned."""
    config = repo_config()
    config["finetune"]["episodes"] = {"settings": ["2w1s", "3w1s"], "folds": [0, 2]}
    config["splits"]["episodes"] = {"settings": ["2w1s", "3w1s"], "folds": 3, "query_per_class": 2}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))

    result = run_snakemake(workdir, "-n", "all")
    assert result.returncode == 0, result.tail()
    ft = config["finetune"]
    counts = job_counts(result.output)
    assert counts["finetune_episode"] == len(ft["datasets"]) * len(ft["methods"]) * 2 * 2
    assert counts["tabulate_episodes"] == len(ft["datasets"])
    without_episodes = {k: v for k, v in expected_demo_counts(repo_config()).items() if "episode" not in k}
    assert {k: v for k, v in counts.items() if "episode" not in k} == without_episodes
    episodes = [job for job in planned_jobs(result.output) if job.rule == "finetune_episode"]
    for job in episodes:
        assert job.resources.get("gpu") == ("0" if "/descriptor/" in job.fields["output"] else "1"), job.fields
        assert job.fields["log"].startswith("results/logs/finetune_episode/"), job.fields
        assert re.search(r"/(2w1s|3w1s)/f[02]/metrics\.json$", job.fields["output"]), job.fields
        assert "episodes.parquet" in job.fields["input"]
        loads_none = any(f"/{row}/" in job.fields["output"] for row in ("scratch", "scratch_patch", "descriptor"))
        assert ("encoder.safetensors" in job.fields["input"]) != loads_none


def test_the_promptsg_image_overlay_plans_image_jobs_only(workdir: Path) -> None:
    """config/promptsg_demo_images.yaml on the demo: six variants and the frozen-vector head on demo-img, built on the
    image backbone and the ingested pictures: no 3D encoder, no cache."""
    overlay = ROOT / "config" / "promptsg_demo_images.yaml"
    result = run_snakemake(workdir, "-n", "promptsg_all", "--configfile", str(overlay))
    assert result.returncode == 0, result.tail()
    counts = job_counts(result.output)
    assert counts["train_promptsg"] == 6 and counts["train_retrieval_head"] == 1
    assert not {"pretrain_encoder", "build_cache_shard", "embed_shape"} & set(counts)
    planned = {job.fields["output"] for job in planned_jobs(result.output) if job.rule == "train_retrieval_head"}
    assert any("heads/retrieval/demo-img/vit-tiny/" in out for out in planned)


SHREC07_PROMPTSG = ("shrec07.yaml", "promptsg_shrec07.yaml")  # --replace-workflow-config --configfile <both>


def test_the_promptsg_shrec07_overlay_is_a_valid_config() -> None:
    from pipeline3d.config import validate

    def merge(base: dict, overlay: dict) -> dict:  # Snakemake's --configfile merge: mappings key by key, recursively
        out = dict(base)
        for key, value in overlay.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    shrec07, overlay = (yaml.safe_load((ROOT / "config" / name).read_text()) for name in SHREC07_PROMPTSG)
    config = merge(shrec07, overlay)
    validate(config)
    assert len(config["promptsg"]["variants"]) == 6 and config["promptsg"]["method"] == "cmae"


def test_difficulty_on_faiss_gpu_asks_for_a_gpu(workdir: Path) -> None:
    config = repo_config()
    config["difficulty"]["engine"] = "gpu"
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(workdir, "-n", "embed_all")
    assert result.returncode == 0, result.tail()
    jobs = [job for job in planned_jobs(result.output) if job.rule == "difficulty_bands"]
    assert len(jobs) == len(config["difficulty"]["spaces"]) and all(job.resources["gpu"] == "1" for job in jobs)
