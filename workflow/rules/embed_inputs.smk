# Inputs, params and targets of the embedding rules (embed.smk); heads_inputs.smk builds on these for the heads.
# Each params function keeps only what changes that job's output: the sweep lists (datasets, methods, spaces,
# folds) stay out, so growing a list never reruns a finished job.
EMBED = config["embed"]
DIFFICULTY = config["difficulty"]
MODALITIES = ["image", "text", "shape"]


wildcard_constraints:
    modality="|".join(MODALITIES),
    model=r"[A-Za-z0-9_.-]+",
    fold=r"\d+",


def _text_cfg():
    return _without(EMBED["text"], "datasets", "name")


def embedding_path(modality, dataset, model):
    return f"{RESULTS}/embeddings/{modality}/{dataset}/{model}.parquet"


def shape_embedding(dataset, method):
    return embedding_path("shape", dataset, method)


def ingest_files(dataset):
    return {"manifest": f"{RESULTS}/ingest/{dataset}/manifest.parquet"}


def split_file(dataset, family):
    return f"{RESULTS}/splits/{dataset}/{family}.parquet"


# ---------------------------------------------------------------------------------------------- embeddings
def _image_kind(dataset):
    return "image" if DATASETS[dataset]["kind"] == "image" else "depth_views"


def embed_image_inputs(wildcards):
    files = ingest_files(wildcards.dataset)
    if _image_kind(wildcards.dataset) == "image":
        return files | {"store": f"{RESULTS}/ingest/{wildcards.dataset}/items.h5"}
    return files | cache_inputs(wildcards.dataset)


def embed_image_cfg(wildcards):
    return stage_params(
        "embed_image",
        {
            "seed": config["seed"],
            "dataset": wildcards.dataset,
            "kind": _image_kind(wildcards.dataset),
            "image": _without(EMBED["image"], "datasets", "depth_views", "name"),
        },
    )


def embed_text_cfg(wildcards):
    return stage_params("embed_text", {"seed": config["seed"], "dataset": wildcards.dataset, "text": _text_cfg()})


def embed_shape_inputs(wildcards):
    return {
        **ingest_files(wildcards.dataset),
        "ttv": split_file(wildcards.dataset, "ttv"),
        **cache_inputs(wildcards.dataset),
        "weights": f"{RESULTS}/models/{wildcards.method}/encoder.safetensors",
        "encoder_json": f"{RESULTS}/models/{wildcards.method}/encoder.json",
    }


def embed_shape_threads(wildcards):
    """One torch thread (byte-identical vectors) + the tokenizing workers: the stage reads them off --threads, so
    the worker count stays out of params and changing it reruns nothing."""
    return 1 + int(EMBED["shape"]["num_workers"])


def embed_shape_cfg(wildcards):
    return stage_params(
        "embed_shape",
        {
            "seed": config["seed"],
            "dataset": wildcards.dataset,
            "method": wildcards.method,
            "shape": _without(EMBED["shape"], "datasets", "methods", "num_workers"),
            "tokens": config["tokens"],
            "eval_seed": config["tokens"]["eval_seed"],
        },
    )


# ---------------------------------------------------------------------------------------------- difficulty
def _space(wildcards):
    return f"{wildcards.modality}/{wildcards.dataset}/{wildcards.model}"


def difficulty_inputs(wildcards):
    files = {
        "embeddings": embedding_path(wildcards.modality, wildcards.dataset, wildcards.model),
        **ingest_files(wildcards.dataset),
        "ttv": split_file(wildcards.dataset, "ttv"),
    }
    if DIFFICULTY["identity"] == "group":
        files["duplicates"] = f"{RESULTS}/fingerprints/{wildcards.dataset}/duplicates.parquet"
    return files


def difficulty_cfg(wildcards):
    return stage_params(
        "difficulty_bands",
        {"seed": config["seed"], "space": _space(wildcards), "difficulty": _without(DIFFICULTY, "spaces")},
    )


# ---------------------------------------------------------------------------------------------- targets
def embedding_targets():
    """Every configured embedding, difficulty band table and head output."""
    image, text, shape = EMBED["image"], EMBED["text"], EMBED["shape"]
    targets = [embedding_path("image", ds, image["name"]) for ds in [*image["datasets"], *image["depth_views"]]]
    targets += [embedding_path("text", ds, text["name"]) for ds in text["datasets"]]
    targets += [shape_embedding(ds, method) for ds in shape["datasets"] for method in shape["methods"]]
    targets += [f"{RESULTS}/difficulty/{space}.parquet" for space in DIFFICULTY["spaces"]]
    return targets
