"""End to end through a real SLURM cluster (ci/start-slurm.sh), with the literal `snakemake --profile slurm`.

Skipped when no SLURM controller answers, unless PIPELINE3D_REQUIRE_SLURM=1 (ci/test.sh sets it once it has a
cluster), then it fails. Each SLURM job costs ~15 s per DAG level (sbatch -> Snakemake in the job -> srun), so the
pipeline run is reduced to the image dataset: make_demo_data -> ingest -> fingerprints -> splits, 4 levels.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from smk import (
    ROOT,
    copy_repo,
    data_layer_only,
    job_counts,
    planned_jobs,
    read_config,
    rewrite_tar_without_last_item,
    run_snakemake,
    smk_env,
    tiny_config,
    write_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

# The profile, with the first status check after 2 s instead of the profile's 30 (jobs here take seconds).
SLURM = ("--profile", "slurm", "--slurm-init-seconds-before-status-checks", "2")
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")


def slurm_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and any(state in out.stdout for state in ("idle", "mix", "alloc"))


@pytest.fixture(scope="module")
def cluster() -> None:
    if not slurm_answers():
        message = "no SLURM cluster answers (start one with: sudo bash ci/start-slurm.sh)"
        if os.environ.get("PIPELINE3D_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def squeue_jobs(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Finished jobs stay listed for MinJobAge (600 s in the CI cluster): id -> rule, cpus, mem, time limit, state."""
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%k|%C|%m|%l|%T"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    jobs = {}
    for line in out.splitlines():
        job_id, comment, cpus, mem, limit, state = line.split("|")
        rule = re.match(r"rule_(\w+?)(?:_wildcards_.*)?$", comment).group(1)
        jobs[job_id] = {"rule": rule, "cpus": cpus, "mem": mem, "limit": limit, "state": state}
    return jobs


def ran_locally(result) -> set[str]:
    """Rules whose jobs ran in the Snakemake process (`localrule x:` in a real run; a dry run says `rule x:`)."""
    return {job.rule for job in planned_jobs(result.output) if job.local} - {"all"}


def minutes(limit: str) -> int:
    """SLURM's [days-]hours:minutes:seconds / minutes:seconds time limit, in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, mins, secs = parts
    return int(days or 0) * 1440 + hours * 60 + mins + (secs > 0)


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = copy_repo(tmp_path_factory.mktemp("slurm") / "repo")
    config = tiny_config(ingest={"workers": 2})
    config["datasets"] = {"demo-img": config["datasets"]["demo-img"]}
    data_layer_only(config)  # the models need the demo's datasets
    write_config(workdir, config)

    # a dry-run caps threads at --cores (1 by default), SLURM jobs do not: plan with plenty to see what rules declare
    plan = run_snakemake(workdir, *SLURM, "-n", "--cores", "64", "all")
    assert plan.returncode == 0, plan.tail()
    result = run_snakemake(workdir, *SLURM, "all", timeout=400)
    assert result.returncode == 0, result.tail(8000)
    return {"workdir": workdir, "plan": planned_jobs(plan.output), "result": result}


def test_every_job_went_through_sbatch_with_the_declared_resources(slurm_run: dict) -> None:
    planned = [job for job in slurm_run["plan"] if job.rule != "all"]
    assert ran_locally(slurm_run["result"]) == {"report"}  # tiny jobs stay out of the queue
    planned = [job for job in planned if job.rule != "report"]
    plan = {job.rule: job for job in planned}  # jobs of one rule declare the same resources
    assert set(plan) == {"make_demo_data", "ingest_dataset", "fingerprint_dataset", "make_splits"}
    job_ids = SUBMITTED.findall(slurm_run["result"].output)
    assert len(job_ids) == len(planned)

    jobs = squeue_jobs(job_ids)
    assert sorted(job["rule"] for job in jobs.values()) == sorted(job.rule for job in planned)
    for job in jobs.values():
        declared = plan[job["rule"]]
        assert job["state"] == "COMPLETED", job
        assert job["mem"] == f"{declared.resources['mem_mb']}M", (job, declared.resources)
        assert minutes(job["limit"]) == int(declared.resources["runtime"]), (job, declared.resources)
        assert int(job["cpus"]) == declared.threads, (job, declared.fields)
    # the config asks for 2 ingest workers: the job's CPUs follow the rule's threads
    assert next(int(j["cpus"]) for j in jobs.values() if j["rule"] == "ingest_dataset") == 2


def test_noop_rerun_submits_nothing(slurm_run: dict) -> None:
    result = run_snakemake(slurm_run["workdir"], *SLURM, "all", timeout=120)
    assert result.returncode == 0, result.tail()
    assert "Nothing to be done" in result.output
    assert not SUBMITTED.findall(result.output)


def test_content_change_resubmits_only_the_dependents(slurm_run: dict) -> None:
    workdir = slurm_run["workdir"]
    images = workdir / "resources" / "demo" / "demo_images.tar"
    rewrite_tar_without_last_item(images)  # new content (a touch is not a change)

    result = run_snakemake(workdir, *SLURM, "all", timeout=300)
    assert result.returncode == 0, result.tail(8000)
    assert job_counts(result.output) == {"ingest_dataset": 1, "fingerprint_dataset": 1, "make_splits": 6, "all": 1}
    jobs = squeue_jobs(SUBMITTED.findall(result.output))
    assert sorted(job["rule"] for job in jobs.values()) == [
        "fingerprint_dataset",
        "ingest_dataset",
        *["make_splits"] * 6,
    ]


def test_cluster_exposes_fake_gpus(cluster) -> None:
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=20, check=True).stdout
    assert re.search(r"gpu:(\w+:)?[1-9]", gres), gres


GPU_SNAKEFILE = """
rule gpu_probe:
    output:
        "gpu.txt",
    log:
        "gpu.log",
    threads: 1
    resources:
        gpu=1,
        mem_mb=200,
        runtime=5,
    shell:
        "echo ${{SLURM_JOB_ID:-none}} ${{CUDA_VISIBLE_DEVICES:-none}} > {output} 2> {log}"
"""


def test_gpu_job_gets_a_device(cluster, tmp_path: Path) -> None:
    """`gpu=1` (the spelling rules use) becomes `sbatch --gpus=1`, and the job sees CUDA_VISIBLE_DEVICES."""
    (tmp_path / "Snakefile").write_text(GPU_SNAKEFILE)
    (tmp_path / "slurm").symlink_to(ROOT / "profiles" / "slurm")
    (tmp_path / "src").mkdir()

    result = run_snakemake(tmp_path, *SLURM, "gpu.txt", timeout=180)
    assert result.returncode == 0, result.tail()
    job_id, devices = (tmp_path / "gpu.txt").read_text().split()
    assert job_id == SUBMITTED.search(result.output).group(1)
    assert re.fullmatch(r"\d+(,\d+)*", devices), devices
    requested = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job_id, "-O", "tres-per-job"], capture_output=True, text=True, timeout=30
    ).stdout
    assert requested.split() == ["gres:gpu:1"], requested


# The whole DAG through SLURM, at its smallest width: every stage of `all` (data, pretraining, fine-tuning,
# embeddings, bands, heads, evaluations, report) once, so each rule's sbatch request is exercised for real.
def full_dag_config() -> dict:
    config = tiny_config()
    config["datasets"] = {name: config["datasets"][name] for name in ("demo-mesh", "demo-img")}
    config["pretrain"]["methods"] = {
        "nepa": {
            **config["pretrain"]["methods"]["nepa"],
            "corpus": [{"dataset": "demo-mesh", "split": "train_mesh", "backend": "mesh", "weight": 1.0}],
        }
    }
    # one DataLoader worker: the fine-tune job must ask SLURM for a CPU for it (--cpus-per-task 1 + 1)
    config["finetune"].update(methods=["nepa"], k=[0], episodes={"settings": []}, num_workers=1)
    config["embed"]["image"].update(datasets=[], depth_views=["demo-mesh"])
    config["embed"]["text"]["datasets"] = ["demo-img"]
    config["difficulty"]["spaces"] = ["shape/demo-mesh/nepa"]
    config["metric_head"]["optuna"]["enabled"] = False
    config["align_text3d"]["folds"] = [0]
    config["eval"]["ucpr"]["pairs"] = [["pointcloud_noray", "udfgrid"]]
    config["eval"]["cpac"]["context_backends"] = ["pointcloud_noray"]
    return config


@pytest.fixture(scope="module")
def slurm_full(cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = copy_repo(tmp_path_factory.mktemp("slurm_full") / "repo")
    write_config(workdir, full_dag_config())
    plan = run_snakemake(workdir, *SLURM, "-n", "--cores", "64", "all")
    assert plan.returncode == 0, plan.tail()
    result = run_snakemake(workdir, *SLURM, "all", timeout=1200)
    assert result.returncode == 0, result.tail(8000)
    return {"workdir": workdir, "plan": planned_jobs(plan.output), "result": result}


def tres_per_job(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", job_id, "-O", "tres-per-job"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return out.strip()


def test_demo_all_runs_through_slurm_with_gpu_rules_on_the_fake_gpus(slurm_full: dict) -> None:
    planned = [job for job in slurm_full["plan"] if job.rule != "all"]
    local = ran_locally(slurm_full["result"])
    assert local == {"tabulate_fewshot", "report"}
    planned = [job for job in planned if job.rule not in local]
    job_ids = SUBMITTED.findall(slurm_full["result"].output)
    assert len(job_ids) == len(planned)
    jobs = squeue_jobs(job_ids)
    assert {job["rule"] for job in jobs.values()} >= {
        "pretrain_encoder",
        "finetune_classifier",
        "embed_image",
        "embed_text",
        "embed_shape",
        "difficulty_bands",
        "train_metric_head",
        "align_text3d",
        "submit_text3d",
        "train_retrieval_head",
        "eval_ucpr",
        "eval_cpac",
    }
    gpu_rules = {job.rule for job in planned if job.resources.get("gpu") == "1"}
    assert gpu_rules >= {"pretrain_encoder", "finetune_classifier", "eval_ucpr", "eval_cpac", "align_text3d"}
    plan = {job.rule: job for job in planned}
    for job_id, job in jobs.items():
        assert job["state"] == "COMPLETED", job
        assert int(job["cpus"]) == plan[job["rule"]].threads, (job, plan[job["rule"]].fields)
        requested = tres_per_job(job_id)
        assert (requested == "gres:gpu:1") == (job["rule"] in gpu_rules), (job, requested)
    assert {int(job["cpus"]) for job in jobs.values() if job["rule"] == "finetune_classifier"} == {2}
    tables = slurm_full["workdir"] / "results" / "tables"
    assert "| nepa |" in (tables / "fewshot.md").read_text()
    assert "no results" not in (tables / "ucpr.md").read_text()


def running_job_of_rule(rule: str) -> str | None:
    out = subprocess.run(
        ["squeue", "-h", "-t", "running", "-o", "%i|%k"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return next(
        (job for job, comment in (line.split("|") for line in out.splitlines()) if comment.startswith(f"rule_{rule}")),
        None,
    )


def test_training_job_checkpoints_on_the_time_limit_signal_and_its_retry_resumes(slurm_full: dict) -> None:
    """The profile's `--signal=USR1@180` on a training job, delivered as SLURM does it at the time limit (to every
    process of the job's steps, not the batch shell; `scancel --signal` takes the same path): the stage writes a
    checkpoint and exits 75, Snakemake in the job survives and reports the failure, and the profile's retry resumes
    from the checkpoint instead of starting over."""
    workdir = slurm_full["workdir"]
    config = read_config(workdir)
    config["pretrain"]["methods"]["nepa"]["train"] = {"steps": 4000, "log_every": 20, "checkpoint_every": 5000}
    write_config(workdir, config)  # a changed pretraining config: the encoder is rebuilt
    target = "results/models/nepa/encoder.safetensors"
    log = workdir / "results" / "logs" / "pretrain_encoder" / "nepa.log"
    cmd = ["timeout", "-s", "INT", "-k", "30", "600", "snakemake", *SLURM, "--verbose", target]
    with subprocess.Popen(
        cmd,
        cwd=workdir,
        env=smk_env(workdir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        deadline, signalled = time.monotonic() + 300, None
        while signalled is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
            job = running_job_of_rule("pretrain_encoder")
            if job and log.exists() and re.search(r"step \d+/4000", log.read_text()):
                subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
                signalled = job
        output = proc.communicate(timeout=600)[0]
    assert signalled, output[-5000:]
    assert proc.returncode == 0, output[-8000:]
    calls = [line for line in output.splitlines() if "sbatch call:" in line and "rule_pretrain_encoder" in line]
    assert len(calls) == 2, calls  # the signalled attempt and its retry
    assert all("--signal=USR1@180" in call and "--cpus-per-task=2" in call for call in calls), calls
    assert squeue_jobs([signalled])[signalled]["state"] == "FAILED"
    stage_log = log.read_text()  # the retry's
    resumed = re.search(r"resuming from step (\d+)", stage_log)
    assert resumed and 0 < int(resumed.group(1)) < 4000, stage_log[-3000:]
    assert "finished 4000 steps" in stage_log
