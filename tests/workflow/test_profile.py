"""The SLURM profile: resolvable as `--profile slurm`, sane settings, overrides only for rules that exist."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from smk import ROOT, job_counts, run_snakemake

PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"


def profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def rule_names(workdir: Path) -> set[str]:
    result = run_snakemake(workdir, "--list-rules")
    assert result.returncode == 0, result.tail()
    return {line.strip() for line in result.output.splitlines() if re.fullmatch(r"\s*\w+\s*", line)}


def test_overrides_name_existing_rules(workdir: Path) -> None:
    rules = rule_names(workdir)
    assert {"make_demo_data", "ingest_dataset", "build_cache_shard", "materialize_unpaired"} <= rules
    config = profile()
    for key in ("set-resources", "set-threads"):
        assert set(config.get(key) or {}) <= rules, f"{key} names unknown rules: {set(config[key]) - rules}"


def test_settings_needed_on_a_cluster() -> None:
    config = profile()
    assert config["executor"] == "slurm"
    # without slurmdbd, the plugin's default status command (sacct) makes Snakemake wait forever
    assert config["slurm-status-command"] == "squeue"
    assert config["rerun-incomplete"] is True
    assert config["retries"] >= 1 and config["keep-going"] is True
    assert config["latency-wait"] >= 5 and config["jobs"] >= 1
    assert {"mem_mb", "runtime"} <= set(config["default-resources"])
    assert config["slurm-keep-successful-logs"] is True


def test_every_setting_is_commented() -> None:
    lines = [line for line in PROFILE.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    uncommented = [line for line in lines if "#" not in line]
    assert not uncommented, uncommented


def test_profile_slurm_resolves_from_the_repo_root(workdir: Path) -> None:
    """`snakemake --profile slurm` looks for ./slurm: the link must point at profiles/slurm."""
    link = ROOT / "slurm"
    assert link.is_symlink() and link.resolve() == PROFILE.parent.resolve(), "run bash ci/setup.sh (creates ./slurm)"

    result = run_snakemake(workdir, "--profile", "slurm", "-n", "all")
    assert result.returncode == 0, result.tail()
    assert "Using profile slurm" in result.output
    assert job_counts(result.output)["all"] == 1


def test_conda_env_pins_match_pyproject() -> None:
    """envs/pipeline3d.yaml (conda users) and pyproject.toml (pip users) install the same versions."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    env = yaml.safe_load((ROOT / "envs" / "pipeline3d.yaml").read_text())
    pip = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))

    def norm(req: str) -> str:  # name==version, lower case, extras dropped
        name, version = req.split("==")
        name = re.sub(r"\[.*\]", "", name).lower().replace("_", "-")
        return f"{name}=={version}"

    assert sorted(map(norm, pip)) == sorted(map(norm, wanted))
