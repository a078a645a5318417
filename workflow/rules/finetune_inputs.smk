# Inputs, params and resources of the finetune rules (finetune.smk).

# torch's compute threads of a fine-tune job; its CPUs add one per DataLoader worker (see pretrain_inputs.smk).
FINETUNE_COMPUTE_THREADS = 1


def finetune_threads(wildcards):
    if row_kind(wildcards.method, config)[0] == "descriptor":  # numpy + a logistic regression, no DataLoader
        return FINETUNE_COMPUTE_THREADS
    return FINETUNE_COMPUTE_THREADS + int(FINETUNE["num_workers"])


def finetune_inputs(wildcards):
    files = {
        "manifest": f"{RESULTS}/ingest/{wildcards.dataset}/manifest.parquet",
        "ttv": f"{RESULTS}/splits/{wildcards.dataset}/ttv.parquet",
        "fewshot": f"{RESULTS}/splits/{wildcards.dataset}/fewshot.parquet",
        **cache_inputs(wildcards.dataset),
    }
    return files | row_weights(wildcards.method)


def row_weights(row):
    """The exported encoder a few-shot row reads (pretrained and linear-probe rows; none for scratch/descriptor)."""
    method = row_kind(row, config)[1]
    if method is None:
        return {}
    return {
        "weights": f"{RESULTS}/models/{method}/encoder.safetensors",
        "encoder_json": f"{RESULTS}/models/{method}/encoder.json",
    }


def row_gpu(wildcards):
    """A few-shot job asks for a GPU when it trains a network: not the descriptor floor (numpy + a logistic
    regression)."""
    return 0 if row_kind(wildcards.method, config)[0] == "descriptor" else 1


def row_knobs(row, sweep):
    """The finetune knobs a row's job depends on: all but the sweep lists; the descriptor's knobs only for the
    descriptor row (and the training knobs not for it), so tuning one never reruns the other."""
    descriptor_only = ("descriptor", "backend", "selection")
    keep = (
        (lambda key: key in descriptor_only)
        if row_kind(row, config)[0] == "descriptor"
        else (lambda key: key != "descriptor")
    )
    return {key: value for key, value in FINETUNE.items() if key not in sweep and keep(key)}


def row_params(row):
    """What a few-shot row's job needs besides the fine-tune knobs: its kind, whether the encoder is frozen, and the
    model/tokens a scratch encoder is built with (a pretrained one comes with its own)."""
    kind, _ = row_kind(row, config)
    out = {
        "row_kind": kind,
        "freeze_encoder": kind == "linear" or (kind == "pretrained" and FINETUNE["freeze_encoder"]),
    }
    return out | row_architecture(row, config)


def finetune_cfg(wildcards):
    """One job's knobs; the sweep lists (datasets, methods, k, seeds) are left out, so growing the grid never
    reruns a finished job."""
    shared = row_knobs(wildcards.method, ("datasets", "methods", "k", "seeds", "episodes", "scratch", "freeze_encoder"))
    return stage_params(
        "finetune_classifier",
        {
            "seed": int(wildcards.seed),
            "k": int(wildcards.k),
            "method": wildcards.method,
            "dataset": wildcards.dataset,
            "finetune": shared,
            "eval_seed": config["tokens"]["eval_seed"],
            **row_params(wildcards.method),
        },
    )


def finetune_metrics(dataset):
    return expand(
        f"{RESULTS}/finetune/{dataset}/{{method}}/k{{k}}/s{{seed}}/metrics.json",
        method=FINETUNE["methods"],
        k=FINETUNE["k"],
        seed=FINETUNE["seeds"],
    )


def episode_inputs(wildcards):
    """One episode job: the manifest (class names), episodes + ttv splits, the cache, and the encoder when the row
    reads one (row_weights: none for scratch rows and the descriptor floor)."""
    files = {
        "manifest": f"{RESULTS}/ingest/{wildcards.dataset}/manifest.parquet",
        "episodes": f"{RESULTS}/splits/{wildcards.dataset}/episodes.parquet",
        "ttv": f"{RESULTS}/splits/{wildcards.dataset}/ttv.parquet",
        **cache_inputs(wildcards.dataset),
    }
    return files | row_weights(wildcards.method)


def episode_cfg(wildcards):
    """One episode's knobs, as finetune_cfg's: the fine-tune knobs less the sweep lists (datasets, methods, k,
    seeds, episodes, scratch rows) and less selection (always the last step: the protocol has no validation split),
    so growing the grid reruns nothing."""
    shared = row_knobs(
        wildcards.method, ("datasets", "methods", "k", "seeds", "episodes", "selection", "scratch", "freeze_encoder")
    )
    if EPISODES.get("steps") and "steps" in shared:
        shared["steps"] = EPISODES["steps"]  # support sets are small: episodes may train for fewer steps
    return stage_params(
        "finetune_episode",
        {
            "seed": config["seed"],
            "method": wildcards.method,
            "dataset": wildcards.dataset,
            "setting": wildcards.setting,
            "fold": int(wildcards.fold),
            "finetune": shared,
            "eval_seed": config["tokens"]["eval_seed"],
            **row_params(wildcards.method),
        },
    )


def episode_folds():
    """finetune.episodes.folds, or every fold splits.episodes draws."""
    folds = EPISODES["folds"]
    return list(range(config["splits"]["episodes"]["folds"])) if folds is None else folds


def episode_metrics(dataset):
    return expand(
        f"{RESULTS}/finetune_episodes/{dataset}/{{method}}/{{setting}}/f{{fold}}/metrics.json",
        method=FINETUNE["methods"],
        setting=EPISODES["settings"],
        fold=episode_folds(),
    )
