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


def shell_commands(workdir: Path, *args: str) -> list[str]:
    result = run_snakemake(workdir, "-n", "-p", *args, "all")
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


def test_tokenizing_workers_change_only_the_cpus_of_embedding_and_retrieval_jobs(workdir: Path) -> None:
    """embed.shape / eval.ucpr num_workers: more CPUs for those jobs, identical params (so nothing reruns)."""
    before = shell_commands(workdir, "--cores", "64")  # a dry run caps threads at --cores
    config = repo_config()
    config["embed"]["shape"]["num_workers"] = config["eval"]["ucpr"]["num_workers"] = 2
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    after = shell_commands(workdir, "--cores", "64")

    def without_threads(commands: list[str]) -> list[str]:
        return sorted(re.sub(r" --threads \d+", "", command) for command in commands)

    assert without_threads(after) == without_threads(before)
    changed = sorted(set(after) - set(before))
    assert changed and all(re.search(r"pipeline3d\.stages\.(embed_shape|eval_ucpr) .* --threads 3", c) for c in changed)


def test_objective_knobs_change_only_their_own_methods_pretraining(workdir: Path) -> None:
    """pretrain.methods.<m>.objective_knobs: overrides of objectives.<objective> for that method alone."""
    before = shell_commands(workdir)
    config = repo_config()
    config["pretrain"]["methods"]["mae"]["objective_knobs"] = {"mask_ratio": 0.25}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    after = shell_commands(workdir)

    changed = sorted(set(after) - set(before))
    assert len(changed) == 1 and "pipeline3d.stages.pretrain_encoder" in changed[0]
    assert '"method":"mae"' in changed[0] and '"mask_ratio":0.25' in changed[0]
    assert config["objectives"]["mae"]["mask_ratio"] != 0.25  # the shared knob itself is unchanged


def test_pretrain_threads_set_the_cpus_and_the_params_of_pretrainings_only(workdir: Path) -> None:
    """pretrain.threads: the torch threads of every pretraining (its CPUs = threads + workers), part of its params
    (another thread count gives other bytes); no other job changes."""
    before = shell_commands(workdir, "--cores", "64")
    config = repo_config()
    config["pretrain"]["threads"] = 1
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    after = shell_commands(workdir, "--cores", "64")

    changed = sorted(set(after) - set(before))
    pretrainings = [c for c in before if "pipeline3d.stages.pretrain_encoder" in c]
    assert len(changed) == len(pretrainings) == len(config["pretrain"]["methods"])
    workers = config["pretrain"].get("num_workers", 2)
    for command in changed:
        assert "pipeline3d.stages.pretrain_encoder" in command and '"threads":1' in command
        assert re.search(rf" --threads {1 + workers}\b", command)
    for command in pretrainings:
        assert re.search(rf" --threads {2 + workers}\b", command) and '"threads"' not in command
