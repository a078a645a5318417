"""Every YAML block of README.md and config/README.md works as written: a config validates and dry-runs (its raw
paths replaced by stand-ins of the same kind, since they name the reader's data), a profile overlay dry-runs on top
of the shipped SLURM profile."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline3d.config import validate
from pipeline3d.io.rawpaths import raw_inputs, raw_paths
from smk import ROOT, job_counts, planned_jobs, run_snakemake

PROFILE_KEYS = {"executor", "default-resources", "set-resources", "jobs", "slurm-status-command"}


def yaml_blocks() -> list[tuple[str, int, dict]]:
    blocks = []
    for doc in (ROOT / "README.md", ROOT / "config" / "README.md"):
        text = doc.read_text()
        for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.M | re.S):
            line = text[: match.start()].count("\n") + 1
            blocks.append((doc.relative_to(ROOT).as_posix(), line, yaml.safe_load(match.group(1))))
    return blocks


BLOCKS = yaml_blocks()


def stand_ins(config: dict, root: Path) -> None:
    """Point every dataset at an empty stand-in of the same shape (a dry run opens no raw file)."""
    for name, ds in config.get("datasets", {}).items():
        paths = []
        for i, path in enumerate(raw_paths(ds)):
            local = root / name / str(i) / Path(path).name
            if Path(path).suffix:  # an archive or h5 file
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(b"")
            else:
                local.mkdir(parents=True)
            paths.append(str(local))
        ds["path"] = paths[0] if isinstance(ds["path"], str) else paths
        for path in raw_inputs(ds):  # files a format expects inside a folder (ScanObjectNN's h5 pair)
            if not Path(path).exists():
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_bytes(b"")


def test_the_docs_have_yaml_examples():
    kinds = {"profile" if PROFILE_KEYS & set(block) else "config" for _, _, block in BLOCKS}
    assert kinds == {"config", "profile"}, BLOCKS


@pytest.mark.parametrize(
    "doc, line, block",
    [b for b in BLOCKS if not PROFILE_KEYS & set(b[2])],
    ids=lambda v: str(v) if not isinstance(v, dict) else "",
)
def test_config_example_validates_and_dry_runs(workdir: Path, doc: str, line: int, block: dict):
    config = yaml.safe_load(yaml.safe_dump(block))
    validate(config)  # a one-line error naming the key if the example is wrong
    stand_ins(config, workdir / "raw")
    path = workdir / "config" / "example.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run_snakemake(workdir, "-n", "all", "--replace-workflow-config", "--configfile", str(path))
    assert result.returncode == 0, f"{doc}:{line}\n{result.tail()}"
    assert job_counts(result.output).get("ingest_dataset") == len(config["datasets"])


@pytest.mark.parametrize(
    "doc, line, block",
    [b for b in BLOCKS if PROFILE_KEYS & set(b[2])],
    ids=lambda v: str(v) if not isinstance(v, dict) else "",
)
def test_profile_overlay_example_dry_runs(workdir: Path, doc: str, line: int, block: dict):
    overlay = workdir / "mycluster"
    overlay.mkdir()
    (overlay / "config.yaml").write_text(yaml.safe_dump(block, sort_keys=False))
    result = run_snakemake(workdir, "--profile", "slurm", "--profile", str(overlay), "-n", "all")
    assert result.returncode == 0, f"{doc}:{line}\n{result.tail()}"
    assert job_counts(result.output)["all"] == 1
    # the example keeps what the shared profile gives training jobs (an overlay's set-resources would replace it)
    pretrain = [job for job in planned_jobs(result.output) if job.rule == "pretrain_encoder"]
    assert pretrain and all(job.resources.get("slurm_extra") == "--signal=USR1@180" for job in pretrain), pretrain
