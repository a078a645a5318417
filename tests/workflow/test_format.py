"""The code is in its formatters' shape and lint-clean: snakefmt for the workflow files (pyproject's [tool.snakefmt]),
ruff format and ruff check (pyflakes, pycodestyle, import order: pyproject's [tool.ruff]) for the Python tree."""

from __future__ import annotations

import subprocess

from smk import ROOT, VENV_BIN

PYTHON_TREE = ["src", "tests", "benchmarks"]


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_workflow_files_are_snakefmt_formatted() -> None:
    result = _run("snakefmt", "--check", "Snakefile", "workflow/rules")
    assert result.returncode == 0, f"run `.venv/bin/snakefmt Snakefile workflow/rules`:\n{result.stdout}{result.stderr}"


def test_python_tree_is_ruff_formatted() -> None:
    result = _run("ruff", "format", "--check", *PYTHON_TREE)
    assert result.returncode == 0, f"run `.venv/bin/ruff format {' '.join(PYTHON_TREE)}`:\n{result.stdout}"


def test_python_tree_is_ruff_clean() -> None:
    result = _run("ruff", "check", *PYTHON_TREE)
    assert result.returncode == 0, f"`.venv/bin/ruff check {' '.join(PYTHON_TREE)}` reports:\n{result.stdout}"
