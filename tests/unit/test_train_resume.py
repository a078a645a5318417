"""Preemption and crashes end with the weights of an uninterrupted run, to the byte (CPU).

The toy objective draws from everything a real one might: the per-step generator, nn.Dropout (global torch RNG),
python ``random`` and numpy's global RNG, and it keeps an EMA teacher. Each run is a fresh interpreter, because
SIGKILL ends the process and the exit code is what Snakemake/SLURM see.

One chain covers both ways a job dies: SIGTERM after step 4 (checkpoint at the next step boundary, exit 75), then
the rerun, with a different DataLoader worker count, is SIGKILLed after step 8 while its last checkpoint is from
step 6 (epoch 1, batch 1: mid-epoch, with lost steps that must be redone identically), then a last rerun finishes.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from pipeline3d.train import EXIT_INTERRUPTED, checkpoint, metrics
from train_toy import run_script

# 20 samples per epoch / global batch 4 = 5 steps per epoch; 2 accumulation micro-batches of 2.
CFG = {
    "steps": 12,
    "batch_size": 4,
    "grad_accum": 2,
    "lr": 0.01,
    "warmup_steps": 2,
    "min_lr_ratio": 0.1,
    "clip_grad": 1.0,
    "checkpoint_every": 3,
    "log_every": 1,
    "seed": 7,
    "num_workers": 0,
}


def _spec(tmp: Path, **over) -> dict:
    return {
        "state_dir": str(tmp / "state"),
        "out": str(tmp / "final.safetensors"),
        "cfg": {**CFG, **over.pop("cfg", {})},
        **over,
    }


def _result(spec: dict) -> dict:
    return json.loads(Path(spec["out"]).with_suffix(".result.json").read_text())


def _curve(spec: dict) -> list[tuple]:
    return [
        (r["step"], r["epoch"], r["loss"], r["lr"], r["grad_norm"], r["mse"])
        for r in metrics.read(Path(spec["state_dir"]) / "metrics.jsonl")
    ]


def _ckpt(spec: dict) -> dict:
    return checkpoint.load(Path(spec["state_dir"]) / "last.ckpt")


@pytest.mark.slow  # three fresh interpreters (~4 s each, mostly importing torch)
def test_sigterm_then_sigkill_mid_epoch_then_rerun_is_byte_identical(tmp_path):
    reference, spec = _spec(tmp_path / "reference"), _spec(tmp_path / "chain")

    # The uninterrupted reference runs first in the same interpreter (one start-up less); the run it is compared
    # with is preempted by SIGTERM after step 4: checkpoint at that step boundary, exit 75.
    preempted = run_script({"phases": [reference, {**spec, "signal_at": 4, "signal": "SIGTERM"}]})
    assert preempted.returncode == EXIT_INTERRUPTED, preempted.stderr
    assert "stopping at step 4 on SIGTERM" in preempted.stderr
    assert (_ckpt(spec)["step"], _ckpt(spec)["epoch"], _ckpt(spec)["batch_index"]) == (4, 0, 4)
    assert _result(spec)["interrupted"] is True
    assert _result(reference) == {
        "steps": 12,
        "steps_run": 12,
        "final_loss": _result(reference)["final_loss"],
        "resumed_from": None,
        "interrupted": False,
    }

    killed = run_script({**spec, "kill_at": 8, "cfg": {**CFG, "num_workers": 1}})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "resuming from step 4 (epoch 0, batch 4)" in killed.stderr
    assert (_ckpt(spec)["step"], _ckpt(spec)["epoch"], _ckpt(spec)["batch_index"]) == (6, 1, 1)

    final = run_script(spec)
    assert final.returncode == 0, final.stderr
    assert "resuming from step 6 (epoch 1, batch 1)" in final.stderr
    assert _result(spec) == {**_result(reference), "steps_run": 6, "resumed_from": 6}

    assert Path(spec["out"]).read_bytes() == Path(reference["out"]).read_bytes()
    encoder = Path(spec["out"]).with_suffix(".encoder.safetensors")
    assert encoder.read_bytes() == Path(reference["out"]).with_suffix(".encoder.safetensors").read_bytes()
    # One consistent history: the redone steps 7-8 replaced their first attempt instead of being listed twice.
    assert _curve(spec) == _curve(reference)
    assert [row[0] for row in _curve(spec)] == list(range(1, CFG["steps"] + 1))
    assert list(Path(spec["state_dir"]).glob(".*tmp*")) == []
