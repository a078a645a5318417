"""Shared fixtures. The helpers they use live in tests/smk.py (importable as `smk` from every test folder)."""

from __future__ import annotations

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
