"""Pretraining through the real workflow: SIGKILL mid-run, rerun, and the encoder is byte-identical.

What a user sees on a cluster when a node dies: the job is killed without warning, Snakemake marks its outputs
incomplete, and the rerun must continue from the last checkpoint under results/_state (which Snakemake never
deletes) and end with exactly the weights an uninterrupted run gives (CPU).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from smk import copy_repo, run_snakemake, smk_env, tiny_config, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TARGET = "results/models/nepa/encoder.safetensors"
STATE = Path("results/_state/pretrain/nepa/last.ckpt")
STEPS, EVERY = 120, 10
# query_nepa_small makes a step slow enough (tens of ms) to be caught between checkpoints
OVERRIDES = {
    "pretrain": {"steps": STEPS, "checkpoint_every": EVERY, "samples_per_epoch": 24},
    "model": {"encoder": "query_nepa_small"},
}
CORES = ("--cores", "2")  # the same thread count in every run (torch results depend on it)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_repo(tmp_path_factory.mktemp("resume") / "repo")
    write_config(workdir, tiny_config(**OVERRIDES))
    result = run_snakemake(workdir, *CORES, TARGET, timeout=900)
    assert result.returncode == 0, result.tail(8000)
    return workdir


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def test_killed_pretraining_resumes_to_identical_weights(workdir: Path) -> None:
    reference = (workdir / TARGET).read_bytes()
    shutil.rmtree(workdir / "results" / "models" / "nepa")
    shutil.rmtree(workdir / "results" / "_state" / "pretrain" / "nepa")

    cmd = ["snakemake", *CORES, TARGET]
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=smk_env(workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state = workdir / STATE
    deadline = time.monotonic() + 300
    killed_after = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists():
                try:
                    step = checkpoint_step(state)
                except Exception:  # being replaced at this very moment: look again
                    step = 0
                if EVERY <= step < STEPS:
                    os.killpg(proc.pid, signal.SIGKILL)  # the job and Snakemake, no warning (a node failure)
                    killed_after = step
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_after is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert killed_after is not None, "the run finished or stalled before a mid-run checkpoint could be killed"
    assert not (workdir / TARGET).exists()

    assert run_snakemake(workdir, "--unlock").returncode == 0  # a killed Snakemake leaves its lock (as on a cluster)
    result = run_snakemake(workdir, *CORES, "--rerun-incomplete", TARGET, timeout=600)
    assert result.returncode == 0, result.tail(8000)
    log = (workdir / "results" / "logs" / "pretrain_encoder" / "nepa.log").read_text()
    assert "resuming from step" in log, log[-3000:]
    assert checkpoint_step(state) == STEPS
    assert (workdir / TARGET).read_bytes() == reference


def test_changed_config_starts_fresh_and_says_so(workdir: Path) -> None:
    config = tiny_config(**OVERRIDES)
    config["pretrain"]["lr"] = 5e-4
    write_config(workdir, config)
    result = run_snakemake(workdir, *CORES, TARGET, timeout=600)
    assert result.returncode == 0, result.tail(8000)
    log = (workdir / "results" / "logs" / "pretrain_encoder" / "nepa.log").read_text()
    assert "config changed" in log and "starting fresh" in log, log[-3000:]
    assert "resuming from step" not in log
