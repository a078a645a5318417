"""Multi-process training: launcher detection, and a real 2-process gloo run under torchrun.

One torchrun launch runs five trainings in the same two processes (each ``train`` call joins and leaves its own
process group, as separate stage runs would): a deterministic run compared with a single-process run of the same
global batch, and a noisy run compared byte for byte with a copy that rank 1 alone interrupts with SIGUSR1 and
that is then resumed by both ranks from rank 0's checkpoint, and a run with a parameter only rank 0 uses and one no
rank uses. A second launch trains every registered objective under DDP (ranks start from different weights and must
end bitwise equal).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline3d.objectives import OBJECTIVES
from pipeline3d.train import TrainConfig, checkpoint, metrics, train
from pipeline3d.train.distributed import LaunchEnv, detect_launch, first_slurm_host
from train_toy import (
    _LAUNCH_VARS,
    ToyData,
    clean_launch_env,  # noqa: F401 - autouse fixture
    make_objective,
    run_script,
    seed_globals,
)

CFG = {
    "steps": 10,
    "batch_size": 8,
    "grad_accum": 2,
    "lr": 0.01,
    "warmup_steps": 1,
    "checkpoint_every": 4,
    "log_every": 1,
    "seed": 2,
}


def test_torchrun_environment_wins():
    env = {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "1234",
        "SLURM_PROCID": "0",
        "SLURM_STEP_NUM_TASKS": "1",
    }
    assert detect_launch(env) == LaunchEnv(3, 4, 1, "torchrun", "n1", 1234)


def test_srun_step_environment():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
    }
    launch = detect_launch(env)
    assert (launch.rank, launch.world_size, launch.local_rank, launch.launcher) == (5, 8, 1, "slurm")
    assert (launch.master_addr, launch.master_port) == ("gpu07", 24242)
    assert detect_launch({**env, "MASTER_ADDR": "head", "MASTER_PORT": "999"}).master_port == 999


def test_single_process_cases():
    assert detect_launch({}) == LaunchEnv()
    # The batch script of a multi-task allocation: SLURM_NTASKS is set but this is one process, not an srun step.
    assert detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "1"}).world_size == 1
    assert detect_launch({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}).world_size == 1


@pytest.mark.parametrize(
    "nodelist, host", [("node1", "node1"), ("gpu[03-05,09]", "gpu03"), ("a[1,4],b2", "a1"), ("cn-01,cn-02", "cn-01")]
)
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def _spec(tmp: Path, name: str, **over) -> dict:
    return {"state_dir": str(tmp / name), "out": str(tmp / f"{name}.safetensors"), "cfg": CFG, **over}


def _curve(path: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["lr"]) for r in metrics.read(path)]


@pytest.mark.slow  # one torchrun launch with two workers
def test_two_process_gloo_run_matches_single_process_and_resumes(tmp_path):
    plain, noisy, preempted = (
        _spec(tmp_path, "plain", noise=False),
        _spec(tmp_path, "noisy"),
        _spec(tmp_path, "preempted"),
    )
    partial = _spec(tmp_path, "partial", noise=False, partial=True, cfg={**CFG, "steps": 2})
    phases = [plain, noisy, {**preempted, "signal_at": 5, "signal": "SIGUSR1", "signal_ranks": [1]}, preempted, partial]
    for i, phase in enumerate(phases[1:]):  # the first phase joins torchrun's rendezvous itself (see train_toy)
        phase["group_file"] = str(tmp_path / f"group{i}")
    proc = run_script({"phases": phases, "watchdog": 90}, nproc=2)
    assert proc.returncode == 0, proc.stderr
    assert "torchrun launch, 2 processes, backend gloo" in proc.stderr
    assert "gradients: DistributedDataParallel over 2 processes" in proc.stderr

    # Same global batches in one process (micro-batches of 4 instead of 2 per rank): the same loss curve.
    seed_globals(123)
    single = make_objective(0, noise=False)
    train(single, ToyData(), TrainConfig(**CFG), tmp_path / "single", config_hash="toy")
    two, one = (_curve(tmp_path / name / "metrics.jsonl") for name in ("plain", "single"))
    assert [s for s, _, _ in two] == [s for s, _, _ in one] == list(range(1, 11))
    for (_, loss2, lr2), (_, loss1, lr1) in zip(two, one):
        assert loss2 == pytest.approx(loss1, rel=1e-4, abs=1e-6) and lr2 == lr1
    assert one[-1][1] < one[0][1]

    # Rank 1 alone got the signal; both ranks stopped at the same step and rank 0 wrote both ranks' RNG states.
    assert "stopping at step 5 on a signal on another rank" in proc.stderr
    assert "resuming from step 5 (epoch 2, batch 1)" in proc.stderr
    ckpt = checkpoint.load(tmp_path / "preempted" / "last.ckpt")
    assert (ckpt["step"], ckpt["world_size"], len(ckpt["rng"])) == (10, 2, 2)
    result = json.loads((tmp_path / "preempted.result.json").read_text())
    assert (result["resumed_from"], result["steps_run"]) == (5, 5)
    assert (tmp_path / "preempted.safetensors").read_bytes() == (tmp_path / "noisy.safetensors").read_bytes()

    # A parameter with a gradient on one rank only is updated; one no rank used keeps grad=None and is left alone
    # by AdamW (a zero gradient would have let weight decay shrink it).
    weights = load_file(tmp_path / "partial.safetensors")
    assert torch.all(weights["rank0_only"] < 1.0)
    assert torch.equal(weights["never"], torch.ones(2, 2))


@pytest.mark.slow  # one torchrun launch with two workers
def test_every_objective_trains_under_ddp_and_ranks_end_identical(tmp_path):
    script = Path(__file__).resolve().parent / "ddp_objectives.py"
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SLURM_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    for name in OBJECTIVES:
        ranks = [json.loads((tmp_path / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["sha"] == ranks[1]["sha"], f"{name}: ranks' weights differ after DDP training"
        assert ranks[0]["loss"] is not None and math.isfinite(ranks[0]["loss"]), name
