"""The training loop in-process: learning, exact resume after SIGUSR1, config changes, metrics, errors."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest
import torch

from pipeline3d.train import EXIT_INTERRUPTED, TrainConfig, checkpoint, metrics, train
from pipeline3d.train.batches import MicroBatchSampler, step_generator
from train_toy import (
    POOL,
    ToyData,
    ToyEpoch,
    clean_launch_env,  # noqa: F401 - autouse fixture
    make_objective,
    seed_globals,
    state_bytes,
)

CFG = TrainConfig(
    steps=8,
    batch_size=4,
    grad_accum=2,
    lr=0.01,
    warmup_steps=2,
    min_lr_ratio=0.1,
    checkpoint_every=3,
    log_every=2,
    seed=3,
)


def _signal_at(step: int, sig: int = signal.SIGUSR1):
    def hook(completed: int) -> None:
        if completed == step:
            os.kill(os.getpid(), sig)

    return hook


def _run(state_dir, cfg=CFG, *, init_seed=0, hook=None, config_hash="toy", noise=True, **kw):
    seed_globals(11)
    objective = make_objective(init_seed, noise=noise, hook=hook)
    return objective, train(objective, ToyData(seed=1), cfg, state_dir, config_hash=config_hash, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    objective, result = _run(tmp_path_factory.mktemp("ref") / "state")
    return state_bytes(objective), result


def _pool_mse(objective) -> float:
    """Regression error over every distinct sample (a fixed evaluation, unlike the noisy per-step losses)."""
    batch = ToyData(seed=1).collate([ToyEpoch(np.arange(POOL), 1)[i] for i in range(POOL)])
    with torch.no_grad():
        return objective(batch, step=0, total_steps=1, generator=torch.Generator())[1]["mse"]


def test_learns_and_reports(tmp_path):
    cfg = TrainConfig(steps=30, batch_size=8, lr=0.02, warmup_steps=3, checkpoint_every=30, log_every=10)
    seed_globals(11)
    objective = make_objective(0, noise=False)
    before = _pool_mse(objective)
    result = train(objective, ToyData(seed=1), cfg, tmp_path / "state", config_hash="toy")
    assert _pool_mse(objective) < 0.5 * before
    assert (result.steps, result.steps_run, result.resumed_from, result.interrupted) == (30, 30, None, False)
    assert result.exit_code == 0
    records = metrics.read(tmp_path / "state" / "metrics.jsonl")
    assert [r["step"] for r in records] == [10, 20, 30]
    assert {"epoch", "lr", "loss_avg", "grad_norm", "samples_per_s", "mse", "consistency"} <= set(records[0])
    assert [r["epoch"] for r in records] == [4, 9, 14]  # 20 samples per epoch / 8 = 2 steps per epoch
    assert result.final_loss == pytest.approx(records[-1]["loss"])


def test_sigusr1_checkpoints_and_resume_is_exact(reference, tmp_path, caplog):
    ref_bytes, ref_result = reference
    caplog.set_level(logging.INFO)
    before = signal.getsignal(signal.SIGUSR1)
    objective, first = _run(tmp_path / "state", hook=_signal_at(4))
    assert (first.steps, first.interrupted, first.exit_code) == (4, True, EXIT_INTERRUPTED)
    assert signal.getsignal(signal.SIGUSR1) is before  # handlers restored
    assert "stopping at step 4 on SIGUSR1" in caplog.text
    ckpt = checkpoint.load(tmp_path / "state" / "last.ckpt")  # weights_only load
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_index"], ckpt["samples_seen"]) == (4, 0, 4, 16)
    assert torch.equal(ckpt["model"]["head.weight"], objective.state_dict()["head.weight"])

    # A different initialisation and different global RNG state: the checkpoint must override both.
    torch.manual_seed(1234)
    resumed, second = _run(tmp_path / "state", init_seed=99)
    assert (second.steps, second.steps_run, second.resumed_from) == (8, 4, 4)
    assert second.final_loss == ref_result.final_loss
    assert state_bytes(resumed) == ref_bytes


def test_resume_needs_the_saved_rng_states(reference, tmp_path):
    """Guard: this objective really depends on the global streams, so the equality above is earned."""
    _run(tmp_path / "state", hook=_signal_at(4))
    path = tmp_path / "state" / "last.ckpt"
    state = torch.load(path, weights_only=True)
    state["rng"][0]["torch"] = torch.Generator().manual_seed(5).get_state()
    torch.save(state, path)
    resumed, _ = _run(tmp_path / "state")
    assert state_bytes(resumed) != reference[0]


def test_finished_run_is_not_redone(reference, tmp_path):
    _run(tmp_path / "state")
    objective, again = _run(tmp_path / "state", init_seed=5)
    assert (again.steps, again.steps_run, again.resumed_from, again.interrupted) == (8, 0, 8, False)
    assert again.final_loss == reference[1].final_loss
    assert state_bytes(objective) == reference[0]  # weights loaded from the final checkpoint


def test_changed_config_starts_fresh_and_keeps_old_state(tmp_path, caplog):
    state_dir = tmp_path / "state"
    _run(state_dir, hook=_signal_at(3))
    old_ckpt = (state_dir / "last.ckpt").read_bytes()
    caplog.set_level(logging.INFO)
    _, result = _run(state_dir, config_hash="other")
    assert result.resumed_from is None and result.steps_run == CFG.steps
    assert "config changed (config_hash toy -> other): starting fresh" in caplog.text
    stale = tmp_path / "state.stale-toy"
    assert (stale / "last.ckpt").read_bytes() == old_ckpt
    assert [r["step"] for r in metrics.read(stale / "metrics.jsonl")] == [2, 3]
    assert [r["step"] for r in metrics.read(state_dir / "metrics.jsonl")] == [2, 4, 6, 8]

    # A result-changing training setting counts as a config change too; logging cadence does not.
    caplog.clear()
    _, same = _run(state_dir, TrainConfig(**{**vars(CFG), "log_every": 1, "num_workers": 1}), config_hash="other")
    assert same.resumed_from == CFG.steps
    _, changed = _run(state_dir, TrainConfig(**{**vars(CFG), "lr": 0.02}), config_hash="other")
    assert changed.resumed_from is None
    assert "train_hash" in caplog.text and (tmp_path / "state.stale-other").is_dir()


def test_unreadable_checkpoint_is_moved_aside(tmp_path, caplog):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "last.ckpt").write_bytes(b"not a checkpoint")
    (state_dir / ".last.ckpt.abc.tmp.ckpt").write_bytes(b"half written")
    _, result = _run(state_dir)
    assert result.resumed_from is None and result.steps == CFG.steps
    assert (tmp_path / "state.stale-unreadable" / "last.ckpt").read_bytes() == b"not a checkpoint"
    assert not (state_dir / ".last.ckpt.abc.tmp.ckpt").exists()


def test_micro_batches_partition_each_global_batch():
    world, accum, bs = 2, 2, 8
    per_rank = [
        list(MicroBatchSampler(n_batches=3, batch_size=bs, start_batch=1, rank=r, world_size=world, grad_accum=accum))
        for r in range(world)
    ]
    assert all(
        len(batches) == 2 * accum and all(len(b) == bs // (world * accum) for b in batches) for batches in per_rank
    )
    for k, first in enumerate((8, 16)):  # global batches 1 and 2; batch 0 was consumed before the resume
        got = sorted(i for r in range(world) for b in per_rank[r][k * accum : (k + 1) * accum] for i in b)
        assert got == list(range(first, first + bs))
    assert per_rank[0][0] == [8, 10] and per_rank[1][0] == [9, 11]  # strided rank slices


def test_step_generator_is_a_function_of_its_key():
    draw = lambda *key: torch.rand(4, generator=step_generator(*key)).tolist()  # noqa: E731
    assert draw(0, 5, 0, 1) == draw(0, 5, 0, 1)
    assert len({tuple(draw(*k)) for k in [(0, 5, 0, 1), (1, 5, 0, 1), (0, 6, 0, 1), (0, 5, 1, 1), (0, 5, 0, 0)]}) == 5


class _Exploding(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2, 2))

    def forward(self, batch, *, step, total_steps, generator):
        return (self.w.sum() * float("nan") if step == 2 else self.w.sum()), {}

    def after_step(self):
        pass


def test_non_finite_loss_stops_without_checkpointing_it(tmp_path):
    with pytest.raises(FloatingPointError, match="non-finite loss nan at step 2"):
        train(
            _Exploding(), ToyData(), TrainConfig(steps=5, batch_size=4, checkpoint_every=1), tmp_path, config_hash="x"
        )
    assert checkpoint.load(tmp_path / "last.ckpt")["step"] == 2


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        TrainConfig.from_dict({"steps": 1, "batch_size": 2, "epochs": 3})
    with pytest.raises(ValueError, match="not divisible by grad_accum"):
        TrainConfig(steps=1, batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig(steps=1, batch_size=2, amp="fp8")
    assert TrainConfig.from_dict({"steps": 1, "batch_size": 2, "betas": [0.9, 0.95]}).betas == (0.9, 0.95)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(
            make_objective(),
            ToyData(samples_per_epoch=3),
            TrainConfig(steps=1, batch_size=4),
            tmp_path,
            config_hash="x",
        )


class _CountingHook:
    """A loop hook (see ``train(hooks=...)``): logs a value every ``every`` steps and keeps state across resumes."""

    def __init__(self, every: int):
        self.every, self.calls = every, []

    def __call__(self, step, objective):
        self.calls.append(step)
        return {"hook_value": float(step)}

    def state_dict(self):
        return {"calls": list(self.calls)}

    def load_state_dict(self, state):
        self.calls = list(state["calls"])


def test_hooks_are_logged_checkpointed_and_restored(tmp_path):
    hook = _CountingHook(every=3)
    _run(tmp_path / "state", hooks=[hook], hook=_signal_at(4))
    assert hook.calls == [3]
    resumed = _CountingHook(every=3)
    _, result = _run(tmp_path / "state", hooks=[resumed])
    assert result.resumed_from == 4 and resumed.calls == [3, 6, 8]  # restored, then every 3 steps and the last
    logged = {r["step"]: r.get("hook_value") for r in metrics.read(tmp_path / "state" / "metrics.jsonl")}
    assert {s: logged[s] for s in (3, 6, 8)} == {3: 3.0, 6: 6.0, 8: 8.0}  # step 3 is not a log_every (2) step
