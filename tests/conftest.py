"""Shared fixtures. The helpers they use live in tests/smk.py (importable as `smk` from every test folder)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

# `import smk` from every test folder (pytest's default prepend import mode does it too)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from smk import copy_repo  # noqa: E402


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh copy of the repo's workflow (demo config) in a tmp folder."""
    return copy_repo(tmp_path / "repo")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection (e.g. a hub download) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    local_connect = socket.socket.connect

    def connect(sock, address):  # AF_UNIX is local IPC (e.g. wandb's own service process), not the network
        if sock.family == getattr(socket, "AF_UNIX", None):
            return local_connect(sock, address)
        refuse()

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---- devices: the CPU suite runs on the CPU even on a GPU node; `pytest -m gpu` runs the CUDA suite -----------------

# Checking the GPU suite's own code on a machine without CUDA: PIPELINE3D_GPU_SUITE_DEVICE=cpu runs it on the CPU.
GPU_SUITE_DEVICE = os.environ.get("PIPELINE3D_GPU_SUITE_DEVICE", "cuda")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and GPU_SUITE_DEVICE == "cuda" and not _cuda_available():
        skip = pytest.mark.skip(reason="needs CUDA (run `bash ci/test.sh -m gpu` on a GPU node)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _suite_device(request, monkeypatch):
    """Jobs pick their device through pipeline3d.device.job_device: the CPU suite pins it to the CPU (its
    byte-identity checks are CPU facts); the GPU suite leaves the choice to job_device (each rank its own GPU) unless
    PIPELINE3D_GPU_SUITE_DEVICE says otherwise. Subprocesses inherit it."""
    if not request.node.get_closest_marker("gpu"):
        monkeypatch.setenv("PIPELINE3D_DEVICE", "cpu")
    elif GPU_SUITE_DEVICE == "cuda":
        monkeypatch.delenv("PIPELINE3D_DEVICE", raising=False)
    else:
        monkeypatch.setenv("PIPELINE3D_DEVICE", GPU_SUITE_DEVICE)
