"""Checkpoint files, RNG state capture and the metrics log."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from pipeline3d.train import checkpoint, metrics, rngstate

LOG = logging.getLogger("test")


def _draw() -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        float(np.random.rand()),
        float(np.random.randn()),
        torch.rand(3).tolist(),
    )


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.randn()  # leave cached gaussians behind: they are state too
    state = rngstate.capture()
    expected = _draw()
    torch.save(state, tmp_path / "rng.pt")
    _draw(), _draw()
    rngstate.restore(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draw() == expected


def test_checkpoint_save_is_atomic_and_loads_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "state" / "last.ckpt"
    checkpoint.save(path, {"format_version": checkpoint.FORMAT_VERSION, "step": 1, "w": torch.ones(2)})

    def killed(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"format_version": checkpoint.FORMAT_VERSION, "step": 2})
    assert checkpoint.load(path)["step"] == 1  # the previous checkpoint survives a failed write
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_load_refuses_foreign_files(tmp_path):
    torch.save({"step": 3}, tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="not a pipeline3d training checkpoint"):
        checkpoint.load(tmp_path / "a.ckpt")


def test_find_resumable_matches_or_moves_aside(tmp_path, caplog):
    state_dir = tmp_path / "s"
    fp = {"config_hash": "aaa", "train_hash": "t1"}
    assert checkpoint.find_resumable(state_dir, fp, LOG) is None
    checkpoint.save(checkpoint.ckpt_path(state_dir), {"format_version": checkpoint.FORMAT_VERSION, "step": 5, **fp})
    assert checkpoint.find_resumable(state_dir, fp, LOG)["step"] == 5

    log_file = state_dir / "metrics.jsonl"
    log_file.write_text('{"step": 1}\n')
    caplog.set_level(logging.INFO)
    assert checkpoint.find_resumable(state_dir, {**fp, "config_hash": "bbb"}, LOG, [log_file]) is None
    assert "config changed (config_hash aaa -> bbb): starting fresh" in caplog.text
    assert (tmp_path / "s.stale-aaa" / "last.ckpt").exists() and (tmp_path / "s.stale-aaa" / "metrics.jsonl").exists()
    assert not checkpoint.ckpt_path(state_dir).exists()
    # A second stale state of the same hash does not overwrite the first.
    checkpoint.save(checkpoint.ckpt_path(state_dir), {"format_version": checkpoint.FORMAT_VERSION, "step": 6, **fp})
    checkpoint.find_resumable(state_dir, {**fp, "train_hash": "t2"}, LOG)
    assert (tmp_path / "s.stale-aaa-2" / "last.ckpt").exists()


def test_metrics_append_read_and_truncate(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        metrics.append(path, {"step": step, "loss": 1.0 / step})
    with open(path, "a") as fh:
        fh.write('{"step": 4, "lo')  # torn by a kill
    assert [r["step"] for r in metrics.read(path)] == [1, 2, 3]
    metrics.truncate_after(path, 2, LOG)
    assert [r["step"] for r in metrics.read(path)] == [1, 2]
    metrics.append(path, {"step": 3, "loss": 0.5})  # appends cleanly after the repair
    assert path.read_text().count("\n") == 3 and [r["step"] for r in metrics.read(path)] == [1, 2, 3]
    metrics.truncate_after(tmp_path / "absent.jsonl", 0, LOG)
    assert not (tmp_path / "absent.jsonl").exists()
