# Inputs, params and resources of the pretrain rules (pretrain.smk).

# CPUs of the training jobs (SLURM --cpus-per-task): torch's compute threads plus one per DataLoader worker the
# config asks for; the stage gives torch what is left after the workers (stages/_cli.py: set_compute_threads).
PRETRAIN_COMPUTE_THREADS = 2


def corpus_inputs(wildcards):
    """Named inputs of a pretraining job: per corpus component, its split table + cache, or its unpaired store."""
    files = {}
    for i, part in enumerate(METHODS[wildcards.method]["corpus"]):
        if part["split"] in UNPAIRED_SPLITS:
            files[f"c{i}_store"] = f"{RESULTS}/splits/{part['dataset']}/unpaired/{part['split']}.h5"
        else:
            files[f"c{i}_split"] = f"{RESULTS}/splits/{part['dataset']}/ttv.parquet"
            files |= {f"c{i}_{key}": value for key, value in cache_inputs(part["dataset"]).items()}
    return files


def pretrain_cfg(wildcards):
    """Only what changes this method's weights: its entry, the shared optimiser knobs, tokens, model, objective."""
    method = METHODS[wildcards.method]
    shared = {key: value for key, value in PRETRAIN.items() if key != "methods"}
    return stage_params(
        "pretrain_encoder",
        {
            "seed": config["seed"],
            "method": wildcards.method,
            "entry": method,
            "train": shared,
            **row_architecture(wildcards.method, config),
            "objective": {
                **config["objectives"].get(method["objective"], {}),
                **method.get("objective_knobs", {}),
            },
        },
    )


def pretrain_threads(wildcards):
    """torch threads (`pretrain.threads`, the method's `train.threads`; 2 when absent) + DataLoader workers."""
    train = {**PRETRAIN, **(METHODS[wildcards.method].get("train") or {})}
    return int(train.get("threads", PRETRAIN_COMPUTE_THREADS)) + int(train["num_workers"])
