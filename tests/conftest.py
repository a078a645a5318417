"""Shared fixtures. The helpers they use live in tests/smk.py (importable as `smk` from every test folder)."""

from __future__ import annotations

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
