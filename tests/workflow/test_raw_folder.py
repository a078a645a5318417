"""A raw *folder* dataset: editing a file inside it must rerun its ingest (Snakemake alone would not notice); a path
that went missing is an error before anything runs, a changed path reruns the chain."""

from __future__ import annotations

from pathlib import Path

from smk import copy_repo, data_layer_only, job_counts, repo_config, run_snakemake, write_config

TETRA = "OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"


def test_editing_a_file_inside_a_raw_folder_reruns_ingest(tmp_path: Path) -> None:
    workdir = copy_repo(tmp_path / "w")
    raw = workdir / "raw" / "shapes"
    for cls in ("cube", "tet"):
        (raw / cls / "train").mkdir(parents=True)
        (raw / cls / "train" / f"{cls}_1.off").write_text(TETRA)
    config = repo_config()
    config["demo"]["enabled"] = False
    config["datasets"] = {"shapes": {"kind": "mesh", "format": "modelnet", "path": "raw/shapes"}}
    data_layer_only(config)  # the models need the demo's datasets
    write_config(workdir, config)
    target = "results/ingest/shapes/manifest.parquet"
    first = run_snakemake(workdir, "--cores", "1", target)
    assert first.returncode == 0, first.tail()
    again = run_snakemake(workdir, "-n", target)
    assert job_counts(again.output) == {}, again.tail()

    # a new file deep inside the folder: the folder's own mtime may not change, its digest does
    (raw / "tet" / "train" / "tet_2.off").write_text(TETRA)
    changed = run_snakemake(workdir, "-n", target)
    assert job_counts(changed.output).get("ingest_dataset") == 1, changed.tail()

    # the dataset's path moved away after that build: an error naming dataset and path before anything runs,
    # not a quiet reuse of the old manifest
    raw.rename(workdir / "raw" / "elsewhere")
    for args in (("-n", target), ("--cores", "1", "data_all")):
        gone = run_snakemake(workdir, *args)
        assert gone.returncode != 0 and "datasets.shapes.path: raw/shapes does not exist" in gone.output, gone.tail()
    # pointing the config at the new place reruns the dataset's chain (the path is part of ingest's params)
    config["datasets"]["shapes"]["path"] = "raw/elsewhere"
    write_config(workdir, config)
    moved = run_snakemake(workdir, "-n", target)
    assert job_counts(moved.output).get("ingest_dataset") == 1, moved.tail()
