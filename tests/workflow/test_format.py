"""The workflow files are in snakefmt's format (line length 120, pyproject's [tool.snakefmt]): the CI format step."""

from __future__ import annotations

import subprocess

from smk import ROOT, VENV_BIN


def test_workflow_files_are_snakefmt_formatted() -> None:
    result = subprocess.run([str(VENV_BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (f"run `.venv/bin/snakefmt Snakefile workflow/rules`:\n{result.stdout}"
                                    f"{result.stderr}")
