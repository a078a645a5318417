# Shared helpers: config validation, wildcard constraints, per-stage params/resources and target lists.
# Kept light: it runs on every parse, including inside every SLURM job (no torch, no globbing of data trees).
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The package is the installed one (ci/setup.sh installs this checkout in editable mode): the code that parses the
# workflow is the code that runs its jobs.

from pipeline3d.config import ConfigError, stage_params as _stage_params, validate as _validate  # noqa: E402
from pipeline3d.contract import BACKENDS, IMAGE_BACKBONE_KEYS, SPLIT_FAMILIES, UNPAIRED_SPLITS  # noqa: E402
from pipeline3d.finetune_rows import all_row_names, row_architecture, row_kind  # noqa: E402
from pipeline3d.io.rawpaths import raw_input_problems, raw_inputs, raw_paths  # noqa: E402
from pipeline3d.io.rawdigest import listing_digest  # noqa: E402
from pipeline3d.train.logging_env import export_logging  # noqa: E402
from pipeline3d.train.signals import ignore_warning_signal_in_slurm_job  # noqa: E402

# The profile's time-limit warning (--signal=USR1@N) reaches every process of a job step, this Snakemake included:
# it must survive it; the training stage under it installs its own handler and checkpoints.
ignore_warning_signal_in_slurm_job()


# The JSON schema (workflow/schemas/config.schema.yaml) checked by pipeline3d: a one-line error naming the key,
# defaults filled in place.
try:
    _validate(config)
except ConfigError as _exc:
    raise WorkflowError(str(_exc)) from None

# The interpreter running Snakemake runs the stages too (a bare `python` may be another one on PATH).
PY = sys.executable
RESULTS = "results"
DATASETS = config["datasets"]
MESH_LIKE = [d for d, c in DATASETS.items() if c["kind"] in ("mesh", "pointcloud")]
MESH_DATASETS = [d for d, c in DATASETS.items() if c["kind"] == "mesh"]
N_SHARDS = config["cache"]["shards"]
SHARDS = [f"{i:04d}" for i in range(N_SHARDS)]
SPLIT_FILES = list(SPLIT_FAMILIES)
PRETRAIN = config["pretrain"]
METHODS = PRETRAIN["methods"]
FINETUNE = config["finetune"]
EPISODES = FINETUNE["episodes"]  # which N-way K-shot episodes run as jobs (splits.episodes draws them)
STATE = f"{RESULTS}/_state"  # undeclared resume state of long jobs (Snakemake deletes declared outputs first)
# Which ready job starts first when cores are short (a local run; SLURM submits in this order too): the data stages
# (short, and every job waits for them), then the pretrainings (the longest; their rows' fine-tunes wait for them),
# then the rest. A rule's priority is its own jobs' only (Snakemake gives none to their inputs), so the data rules
# need theirs: without it a pretraining's corpus cache waited behind fine-tunes for 25 min of a SHREC'07 run.
PRIORITY_DATA = 20
PRIORITY_PRETRAIN = 10
# Training jobs read the logging section (W&B mirror) from the environment, not from params: switching it on or
# off must not rerun anything. Exported at parse time, so every job inherits it (a SLURM job parses this again).
export_logging(config["logging"])


wildcard_constraints:
    dataset="|".join(DATASETS) or "^$",
    shard=r"\d{4}",
    usplit="|".join(UNPAIRED_SPLITS),
    family="|".join(SPLIT_FILES),
    method="|".join(re.escape(name) for name in all_row_names(config)),
    k=r"\d+",
    seed=r"\d+",
    setting=r"\d+w\d+s",
    fold=r"\d+",


def stage_params(stage, config_slice):
    """Canonical JSON of a stage's config slice + its code version (drives the params rerun trigger)."""
    return _stage_params(stage, config_slice)


def dataset_params(stage, wildcards, extra):
    ds = DATASETS[wildcards.dataset]
    return stage_params(stage, {"seed": config["seed"], "dataset": wildcards.dataset, "source": ds, **extra})


def _without(section, *keys):
    """A config section without ``keys`` (targets lists and knobs kept out of a stage's params)."""
    return {key: value for key, value in section.items() if key not in keys}


def ingest_params(wildcards):
    """Ingest's params also carry a digest of a raw folder's listing: Snakemake ignores changes inside folders."""
    digests = [listing_digest(path) for path in raw_paths(DATASETS[wildcards.dataset])]
    extra = {"ingest": config["ingest"], "raw_listing": digests[0] if len(digests) == 1 else digests}
    return dataset_params("ingest_dataset", wildcards, extra)


def dataset_cfg(stage, *sections):
    """params.cfg for a per-dataset rule: seed, the dataset's entry and the named config sections."""

    def cfg(wildcards):
        return dataset_params(stage, wildcards, {section: config[section] for section in sections})

    return cfg


def split_family_cfg(wildcards):
    """A split family's params hold only the splits keys it depends on (FAMILY_KEYS)."""
    from pipeline3d.data.splits.build import FAMILY_KEYS

    keys = FAMILY_KEYS[wildcards.family]
    return dataset_params("make_splits", wildcards, {"splits": {k: config["splits"][k] for k in keys}})


def parent_of(name):
    """A params function giving the folder of the named output."""

    def parent(wildcards, output):
        return str(Path(output[name]).parent)

    return parent


def parent_of_input(name):
    """A params function giving the folder of the named input."""

    def parent(wildcards, input):
        return str(Path(input[name]).parent)

    return parent


def get_raw_inputs(wildcards):
    """The raw files (or directory) a dataset is ingested from; paths only, no globbing."""
    return raw_inputs(DATASETS[wildcards.dataset])


def shards_of(dataset):
    return expand(f"{RESULTS}/cache/{dataset}/shard-{{shard}}.h5", shard=SHARDS)


def get_shards(wildcards):
    return shards_of(wildcards.dataset)


def get_fingerprint_inputs(wildcards):
    if DATASETS[wildcards.dataset]["kind"] == "image":
        return {"store": f"{RESULTS}/ingest/{wildcards.dataset}/items.h5"}
    return {"index": f"{RESULTS}/cache/{wildcards.dataset}/index.parquet", "shards": get_shards(wildcards)}


def scaled_runtime(base):
    """Runtime in minutes that grows with the attempt, so a retry after a time-out gets more."""
    return lambda wildcards, attempt: base * attempt


def cache_inputs(dataset):
    return {"index": f"{RESULTS}/cache/{dataset}/index.parquet", "shards": shards_of(dataset)}


def input_json(wildcards, input):
    """The job's named inputs as JSON (name -> path or list of paths), for stages that take many files."""
    import json

    return json.dumps({name: (list(value) if not isinstance(value, str) else value) for name, value in input.items()})


def data_targets():
    targets = []
    for dataset, ds in DATASETS.items():
        targets += [f"{RESULTS}/ingest/{dataset}/manifest.parquet", f"{RESULTS}/ingest/{dataset}/rejects.parquet"]
        if ds["kind"] in ("mesh", "pointcloud"):
            targets.append(f"{RESULTS}/cache/{dataset}/index.parquet")
        targets.append(f"{RESULTS}/fingerprints/{dataset}/duplicates.parquet")
        targets += expand(f"{RESULTS}/splits/{dataset}/{{name}}.parquet", name=SPLIT_FILES)
    for dataset in MESH_DATASETS:
        targets += expand(f"{RESULTS}/splits/{dataset}/unpaired/{{usplit}}.h5", usplit=UNPAIRED_SPLITS)
    return targets


def model_targets():
    """Pretrained encoders, the few-shot tables and (when finetune.episodes names settings) the episode tables."""
    targets = expand(f"{RESULTS}/models/{{method}}/encoder.safetensors", method=list(METHODS))
    targets += expand(f"{RESULTS}/tables/fewshot/{{dataset}}.md", dataset=FINETUNE["datasets"])
    if EPISODES["settings"]:
        targets += expand(f"{RESULTS}/tables/episodes/{{dataset}}.md", dataset=FINETUNE["datasets"])
    return targets
