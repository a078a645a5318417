"""Helpers for the workflow-level tests (tests/workflow, tests/e2e) and benchmarks: repo copies, running Snakemake,
reading its job stats and dry-run job blocks, reduced and synthetic configs.

Workflow tests never run in the repo itself: `copy_repo` copies what a run needs (Snakefile, workflow/, config/,
profiles/, envs/, src/) into a tmp folder. The workflow imports pipeline3d from `<workdir>/src` first, and
`run_snakemake` puts `<workdir>/src` on PYTHONPATH for the stage jobs too, so editing the copy's code (e.g.
`src/pipeline3d/versions.py`) acts like a code change in a real checkout.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
REPO_ITEMS = ("Snakefile", "workflow", "config", "profiles", "envs", "src")
VENV_BIN = Path(sys.executable).parent

# A reduced demo: same datasets and stages as config/config.yaml, a few shapes and small cache arrays, so a full
# local run takes seconds. Deep-merged over the repo's config/config.yaml.
TINY_OVERRIDES: dict = {
    "demo": {
        "classes": ["chair", "mug", "lamp"],
        "train_per_class": 4,
        "test_per_class": 2,
        "scans_per_class": 4,
        "scan_points": 256,
        "image_views": 1,
        "image_size": 32,
    },
    "cache": {
        "shards": 1,
        "pc_points": 256,
        "pt_pool": 512,
        "n_views": 4,
        "rays_per_view": 64,
        "pc_grid": 16,
        "df_grid": 16,
    },
    "fingerprints": {"views": 2},
    "splits": {
        "kfold": 2,
        "fewshot_k": [1],
        "fewshot_seeds": [0],
        "query_gallery_splits": 2,
        "episodes": {"settings": ["3w1s"], "folds": 1, "query_per_class": 1},
    },
    "tokens": {"n_point": 16, "n_ray": 16, "patch": {"points": 64, "groups": 8, "group_size": 8}},
    "pretrain": {
        "steps": 4,
        "batch_size": 4,
        "warmup_steps": 1,
        "checkpoint_every": 2,
        "samples_per_epoch": 8,
        "methods": {"point_mae": {"train": {"steps": 4, "warmup_steps": 1, "checkpoint_every": 2}}},
    },
    # every kind of few-shot row: the descriptor floor, scratch, a pretrained encoder, a patch encoder's linear probe
    "finetune": {
        "methods": ["descriptor", "scratch", "nepa", "point_mae-linear"],
        "k": [0, 1],
        "seeds": [0],
        "n_point": 16,
        "steps": 2,
        "episodes": {"settings": ["3w1s"]},
        "batch_size": 8,
        "mc_draws_test": 1,
    },
    "embed": {"shape": {"methods": ["nepa"], "n_point": 16, "n_ray": 16, "mc_draws": 1}},
    "difficulty": {"bands": {"hard": [1, 2], "medium": [3, 4], "easy": [5, 8]}},
    "metric_head": {"steps": 6, "checkpoint_every": 3, "optuna": {"trials": 2, "steps": 3}},
    "align_text3d": {"steps": 4, "eval_every": 2},
    "retrieval_head": {"steps": 4, "checkpoint_every": 2},
    "promptsg": {"steps": 4, "checkpoint_every": 2, "bnneck_dim": 16, "interaction_layers": 1, "n_point": 16},
    "eval": {
        "ucpr": {
            "methods": ["nepa"],
            "pairs": [["mesh", "udfgrid"], ["pointcloud_noray", "udfgrid"]],
            "n_point": 16,
            "n_ray": 16,
            "mc_draws": 1,
        },
        "cpac": {"methods": ["nepa"], "n_context": 12, "n_query": 16},
    },
}
TINY_METHODS = ("nepa", "point_mae")  # the tiny run pretrains a query-token and a patch method (the demo has more)


# --------------------------------------------------------------------------------------------- repo copies
def copy_repo(dst: Path) -> Path:
    """Copy what a workflow run needs into ``dst`` (no results, no caches) and recreate the ./slurm link."""
    dst.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".snakemake", "results", "resources")
    for name in REPO_ITEMS:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(src, dst / name)
    (dst / "slurm").symlink_to("profiles/slurm")
    return dst


def repo_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def deep_merge(base: dict, overrides: dict) -> dict:
    out = deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = deepcopy(value)
    return out


def tiny_config(**overrides) -> dict:
    config = deep_merge(repo_config(), TINY_OVERRIDES)
    config["pretrain"]["methods"] = {m: config["pretrain"]["methods"][m] for m in TINY_METHODS}
    config["promptsg"]["variants"] = {"full": {}}  # one PromptSG job (the demo runs two)
    return deep_merge(config, overrides)


def data_layer_only(config: dict) -> dict:
    """No pretraining or fine-tuning (for configs whose datasets are not the demo's)."""
    config["pretrain"]["methods"] = {}
    config["finetune"]["datasets"], config["finetune"]["methods"] = [], ["scratch"]
    for modality in ("image", "text", "shape"):
        config["embed"][modality]["datasets"] = []
    config["embed"]["image"]["depth_views"], config["embed"]["shape"]["methods"] = [], []
    config["difficulty"]["spaces"], config["metric_head"]["space"] = [], None
    config["align_text3d"]["datasets"], config["retrieval_head"]["datasets"] = [], []
    config["promptsg"]["datasets"] = []
    config["eval"]["ucpr"]["datasets"], config["eval"]["cpac"]["datasets"] = [], []
    return config


def eval_jobs(config: dict) -> dict[str, int]:
    """Jobs of the evaluation rules and the report."""
    ucpr, cpac = config["eval"]["ucpr"], config["eval"]["cpac"]
    counts = {
        "eval_ucpr": len(ucpr["datasets"]) * len(ucpr["methods"]) * len(ucpr["pairs"]),
        "eval_cpac": len(cpac["datasets"]) * len(cpac["methods"]) * len(cpac["context_backends"]),
        "report": 1,
    }
    return {rule: n for rule, n in counts.items() if n}


def embedding_jobs(config: dict) -> dict[str, int]:
    """Jobs of the embedding and head rules, from the config's lists (rules with no job left out)."""
    embed, head = config["embed"], config["metric_head"]
    align, retrieval = config["align_text3d"], config["retrieval_head"]
    counts = {
        "embed_image": len(embed["image"]["datasets"]) + len(embed["image"]["depth_views"]),
        "embed_text": len(embed["text"]["datasets"]),
        "embed_shape": len(embed["shape"]["datasets"]) * len(embed["shape"]["methods"]),
        "difficulty_bands": len(config["difficulty"]["spaces"]),
        "tune_metric_head": int(bool(head["space"]) and head["optuna"]["enabled"]),
        "train_metric_head": int(bool(head["space"])),
        "align_text3d": len(align["datasets"]) * len(align["folds"]),
        "submit_text3d": len(align["datasets"]),
        "train_retrieval_head": len(retrieval["datasets"]),
        "train_promptsg": len(config["promptsg"]["datasets"]) * len(config["promptsg"]["variants"]),
    }
    return {rule: n for rule, n in counts.items() if n}


def read_config(workdir: Path) -> dict:
    return yaml.safe_load((workdir / "config" / "config.yaml").read_text())


def write_config(workdir: Path, config: dict) -> Path:
    """Replace the copy's config/config.yaml (the file the Snakefile loads), as a user would edit it."""
    path = workdir / "config" / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def rewrite_tar_without_last_item(path: Path) -> None:
    """Drop the last item (all members sharing its stem) from a tar: new content, still a valid archive."""
    with tarfile.open(path) as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()]
    last_stem = Path(members[-1][0].name).stem
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as dst:
        for member, data in members:
            if Path(member.name).stem != last_stem:
                dst.addfile(member, None if data is None else io.BytesIO(data))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------- running snakemake
@dataclass
class SmkResult:
    cmd: list[str]
    returncode: int
    output: str  # stdout and stderr interleaved (snakemake logs to stderr)

    def tail(self, n: int = 4000) -> str:
        return f"$ {' '.join(self.cmd)}\n(exit {self.returncode})\n{self.output[-n:]}"


def smk_env(workdir: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir / "src"), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_snakemake(workdir: Path, *args: str, timeout: int = 600) -> SmkResult:
    """Run the literal `snakemake ...` (the venv's) in ``workdir``, bounded by ``timeout`` seconds.

    SIGINT, not SIGTERM: Snakemake ignores SIGTERM while it waits for remote (SLURM) jobs.
    """
    cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout), "snakemake", *args]
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        env=smk_env(workdir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return SmkResult(cmd[6:], proc.returncode, proc.stdout)


def job_counts(output: str) -> dict[str, int]:
    """Per-rule job counts from Snakemake's "Job stats" table; {} when there is nothing to do."""
    if "Nothing to be done" in output:
        return {}
    match = re.search(r"Job stats:\n(?:.*\n)?job\s+count\n[-\s]+\n((?:.*\n)*?)total\s+\d+", output)
    if not match:
        raise AssertionError(f"no job stats in snakemake output:\n{output[-3000:]}")
    counts = {}
    for line in match.group(1).splitlines():
        name, count = line.split()
        counts[name] = int(count)
    return counts


@dataclass
class PlannedJob:
    rule: str
    fields: dict[str, str]
    local: bool = False  # `localrule x:` in a real run's output (a dry run prints `rule x:` for every job)

    @property
    def resources(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.fields.get("resources", "").split(", ") if "=" in item)

    @property
    def threads(self) -> int:
        return int(self.fields.get("threads", 1))


def planned_jobs(output: str) -> list[PlannedJob]:
    """The job blocks of a dry run or a run (`rule x:` / `localrule x:` followed by indented `key: value` lines)."""
    jobs: list[PlannedJob] = []
    for line in output.splitlines():
        head = re.match(r"^(local)?rule (\w+):$", line)
        if head:
            jobs.append(PlannedJob(head.group(2), {}, local=bool(head.group(1))))
        elif jobs and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            jobs[-1].fields.setdefault(key, value)
    return jobs


# --------------------------------------------------------------------------------------------- synthetic manifest
def write_big_manifest_workdir(workdir: Path, n_shapes: int, shards: int, dataset: str = "big") -> dict:
    """Turn a repo copy into one whose ingest is already done for ``n_shapes`` shapes of one mesh dataset.

    Writes a contract-conforming manifest.parquet (and empty rejects / item store) under results/ingest/<dataset>/,
    newer than the raw archive, plus a config with ``shards`` cache shards; the demo is switched off.
    Returns the config.
    """
    import numpy as np
    import pandas as pd

    raw = workdir / "raw" / f"{dataset}.tar.gz"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_bytes(b"stand-in for a ShapeNetCore archive")
    config = deep_merge(repo_config(), {"demo": {"enabled": False}, "cache": {"shards": shards}})
    config["datasets"] = {dataset: {"kind": "mesh", "format": "shapenet", "path": str(raw.relative_to(workdir))}}
    data_layer_only(config)
    write_config(workdir, config)

    n_classes = 55
    labels = np.arange(n_shapes) % n_classes
    names = [f"{i:08x}" for i in range(n_shapes)]
    classes = [f"{label:08d}" for label in labels]
    manifest = pd.DataFrame(
        {
            "shape_id": [f"{dataset}/{c}/{n}" for c, n in zip(classes, names)],
            "dataset": dataset,
            "kind": "mesh",
            "label": labels.astype("int64"),
            "label_name": classes,
            "source_split": "",
            "source": [f"{raw.name}::{c}/{n}/models/model_normalized.obj" for c, n in zip(classes, names)],
            "sha256": [f"{i:064x}" for i in range(n_shapes)],
            "n_vertices": pd.array(np.full(n_shapes, 2000), dtype="Int64"),
            "n_faces": pd.array(np.full(n_shapes, 4000), dtype="Int64"),
            "n_points": pd.array([None] * n_shapes, dtype="Int64"),
            "meta": "{}",
        }
    )
    out = workdir / "results" / "ingest" / dataset
    out.mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(out / "manifest.parquet", index=False)
    pd.DataFrame({c: pd.Series(dtype="string") for c in ("source", "stage", "reason", "detail")}).to_parquet(
        out / "rejects.parquet", index=False
    )
    (out / "items.h5").write_bytes(b"")
    return config


def expected_big_counts(shards: int) -> dict[str, int]:
    """Jobs of `all` for one mesh dataset whose ingest is done: one per shard, a handful per dataset."""
    return {
        "build_cache_shard": shards,
        "index_cache": 1,
        "fingerprint_dataset": 1,
        "make_splits": 6,  # one per split family
        "materialize_unpaired": 4,
        "report": 1,  # `all` always ends with the report (its sections say "no results" here)
        "all": 1,
    }
