"""Stage params are canonical: rewriting config.yaml with its keys in another order changes no job's command."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from smk import repo_config, run_snakemake


def reversed_keys(value):
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    return value


def shell_commands(workdir: Path) -> list[str]:
    result = run_snakemake(workdir, "-n", "-p", "all")
    assert result.returncode == 0, result.tail()
    commands = re.findall(r"^Shell command: (.*)$", result.output, flags=re.M)
    assert commands
    return sorted(commands)


def test_reordered_config_gives_identical_stage_commands(workdir: Path) -> None:
    before = shell_commands(workdir)
    config = repo_config()
    shuffled = reversed_keys(config)
    assert list(shuffled) != list(config) and shuffled == config  # same content, other order
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(shuffled, sort_keys=False))

    assert shell_commands(workdir) == before
    assert any("--params '{" in command for command in before)  # the params are in the commands compared
