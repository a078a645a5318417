"""The device policy (pipeline3d.device) and, without a GPU, the check that every model input reaches the model's
device: with the model on ``meta``, an input left on the CPU raises "not on the expected device" (the bug a CUDA
run would hit), while a correct path runs until its first copy back to the host ("Cannot copy out of meta tensor").
What this cannot catch: numerics that differ on a GPU, kernels missing there, NCCL, memory; the GPU suite
(``pytest -m gpu``) runs those on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline3d import device as D
from pipeline3d.train import distributed

REACHED_HOST = "Cannot copy out of meta tensor"


@pytest.fixture
def no_forced_device(monkeypatch):
    monkeypatch.delenv(D.DEVICE_ENV, raising=False)


def _fake_gpus(monkeypatch, count: int) -> list[torch.device]:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: chosen.append(torch.device(dev)))
    return chosen


def test_cpu_without_cuda_and_the_override_wins(monkeypatch, no_forced_device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.job_device() == torch.device("cpu")
    monkeypatch.setenv(D.DEVICE_ENV, "meta")
    assert D.job_device(local_rank=3) == torch.device("meta")


@pytest.mark.parametrize(
    "visible, local_rank, expected",
    [
        (4, 3, "cuda:3"),  # torchrun: every process of the node sees all its GPUs
        (1, 1, "cuda:0"),  # srun with one GPU bound per task: local rank 1 sees a single device, cuda:0
        (2, 3, "cuda:1"),
    ],
)
def test_gpu_index_follows_the_visible_devices(monkeypatch, no_forced_device, visible, local_rank, expected):
    _fake_gpus(monkeypatch, visible)
    assert D.job_device(local_rank) == torch.device(expected)


def test_training_setup_takes_the_launchers_local_rank_modulo_the_visible_gpus(monkeypatch, no_forced_device):
    chosen = _fake_gpus(monkeypatch, 1)
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "1"}  # a one-process launch: no process group
    dist = distributed.setup(environ=env)
    assert dist.device == torch.device("cuda:0") and chosen == [torch.device("cuda:0")]


def test_to_host_widens_half_precision_and_makes_float64_on_the_cpu():
    x = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
    out = D.to_host(x, np.float64)
    assert out.dtype == np.float64 and out.tolist() == [1.5, -2.25]
    nested = D.to_device({"a": torch.zeros(2), "b": [torch.ones(1), 3], "c": "x"}, torch.device("meta"))
    assert nested["a"].is_meta and nested["b"][0].is_meta and nested["b"][1] == 3 and nested["c"] == "x"


def test_model_device_of_a_module_without_parameters_is_the_cpu():
    assert D.model_device(torch.nn.ReLU()) == torch.device("cpu")
    assert D.model_device(torch.nn.Linear(2, 2).to("meta")) == torch.device("meta")


def test_the_meta_check_tells_a_forgotten_input_from_a_correct_path():
    model = torch.nn.Linear(3, 2).to("meta")
    with pytest.raises(RuntimeError, match="expected device"):
        model(torch.zeros(1, 3))  # the input stayed on the CPU
    with pytest.raises(NotImplementedError, match=REACHED_HOST):
        D.to_host(model(torch.zeros(1, 3).to(D.model_device(model))))


def test_a_training_job_gives_torch_the_cpus_its_dataloader_workers_leave():
    from pipeline3d.stages._cli import set_compute_threads

    before = torch.get_num_threads()
    try:
        assert set_compute_threads(8, 6) == 2 == torch.get_num_threads()  # SLURM: 2 compute + 6 workers
        assert set_compute_threads(2, 6) == 1  # --cores capped the job below its workers: torch still gets one
        assert set_compute_threads(2, 0) == 2
    finally:
        torch.set_num_threads(before)
