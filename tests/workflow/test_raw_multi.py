"""A dataset whose `path` lists several raw inputs: every one is a job input, and a change in any reruns ingest."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pandas as pd

from smk import copy_repo, data_layer_only, job_counts, repo_config, run_snakemake, write_config

TETRA = "OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"


def write_tar_gz(path: Path, folder: Path) -> None:
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)


def test_every_listed_input_is_tracked(tmp_path: Path) -> None:
    workdir = copy_repo(tmp_path / "w")
    folder, staged = workdir / "raw" / "main", tmp_path / "staged" / "more"
    (folder / "cube" / "train").mkdir(parents=True)
    (folder / "cube" / "train" / "cube_1.off").write_text(TETRA)
    (staged / "tet" / "test").mkdir(parents=True)
    (staged / "tet" / "test" / "tet_1.off").write_text(TETRA)
    archive = workdir / "raw" / "more.tar.gz"
    write_tar_gz(archive, staged)

    config = repo_config()
    config["demo"]["enabled"] = False
    config["datasets"] = {"shapes": {"kind": "mesh", "format": "modelnet", "path": ["raw/main", "raw/more.tar.gz"]}}
    data_layer_only(config)  # the models need the demo's datasets
    write_config(workdir, config)
    target = "results/ingest/shapes/manifest.parquet"
    first = run_snakemake(workdir, "--cores", "1", target)
    assert first.returncode == 0, first.tail()
    manifest = pd.read_parquet(workdir / target)
    assert manifest["shape_id"].tolist() == ["shapes/cube/cube_1", "shapes/tet/tet_1"]
    assert manifest["source"].tolist() == ["raw/main/cube/train/cube_1.off", "raw/more.tar.gz::more/tet/test/tet_1.off"]
    assert job_counts(run_snakemake(workdir, "-n", target).output) == {}

    # a new file deep inside the listed folder: its listing digest changes; removing it again restores the digest
    extra = folder / "cube" / "train" / "cube_2.off"
    extra.write_text(TETRA)
    changed = run_snakemake(workdir, "-n", target)
    assert job_counts(changed.output).get("ingest_dataset") == 1, changed.tail()
    extra.unlink()
    assert job_counts(run_snakemake(workdir, "-n", target).output) == {}

    # a rewritten archive (the second entry): a newer input file
    (staged / "tet" / "test" / "tet_2.off").write_text(TETRA)
    write_tar_gz(archive, staged)
    stat = archive.stat()
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    rewritten = run_snakemake(workdir, "-n", target)
    assert job_counts(rewritten.output).get("ingest_dataset") == 1, rewritten.tail()
