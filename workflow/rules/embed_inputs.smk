# Inputs, params and targets of the embedding and head rules (embed.smk, heads.smk). Each params function keeps
# only what changes that job's output: the sweep lists (datasets, methods, spaces, folds) stay out, so growing a
# list never reruns a finished job.
EMBED = config["embed"]
DIFFICULTY = config["difficulty"]
METRIC_HEAD = config["metric_head"]
ALIGN = config["align_text3d"]
RETRIEVAL = config["retrieval_head"]
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


# ---------------------------------------------------------------------------------------------- metric head
def metric_head_inputs(wildcards):
    return {
        "embeddings": embedding_path(wildcards.modality, wildcards.dataset, wildcards.model),
        "difficulty": f"{RESULTS}/difficulty/{_space(wildcards)}.parquet",
        **ingest_files(wildcards.dataset),
        "ttv": split_file(wildcards.dataset, "ttv"),
        "qg": split_file(wildcards.dataset, "qg"),
    }


def metric_head_best(wildcards):
    if not METRIC_HEAD["optuna"]["enabled"]:
        return {}
    return {"best": f"{RESULTS}/optuna/metric_head/{_space(wildcards)}/best.json"}


def _head_cfg():
    return _without(METRIC_HEAD, "optuna", "space")


def tune_metric_head_cfg(wildcards):
    return stage_params(
        "tune_metric_head",
        {"seed": config["seed"], "space": _space(wildcards), "head": _head_cfg(), "optuna": METRIC_HEAD["optuna"]},
    )


def train_metric_head_cfg(wildcards):
    return stage_params(
        "train_metric_head",
        {
            "seed": config["seed"],
            "space": _space(wildcards),
            "head": _head_cfg(),
            "tuned": METRIC_HEAD["optuna"]["enabled"],
        },
    )


# ---------------------------------------------------------------------------------------------- text-3D
def _caption_files():
    captions = ALIGN["captions"]
    return {"captions_manifest": f"{RESULTS}/ingest/{captions['dataset']}/manifest.parquet"} if captions else {}


def align_inputs(wildcards):
    return {
        "shape_embeddings": shape_embedding(wildcards.dataset, wildcards.method),
        "kfold": split_file(wildcards.dataset, "kfold"),
        **ingest_files(wildcards.dataset),
        **_caption_files(),
    }


def _align_cfg():
    return _without(ALIGN, "datasets", "folds")


def align_cfg(wildcards):
    return stage_params(
        "align_text3d",
        {
            "seed": config["seed"],
            "dataset": wildcards.dataset,
            "method": wildcards.method,
            "fold": int(wildcards.fold),
            "align": _align_cfg(),
            "text": _text_cfg(),
        },
    )


def _fold_files(wildcards, name):
    return expand(
        f"{RESULTS}/align_text3d/{wildcards.dataset}/{wildcards.method}/fold{{fold}}/{name}", fold=ALIGN["folds"]
    )


def submit_inputs(wildcards):
    return {
        "shape_embeddings": shape_embedding(wildcards.dataset, wildcards.method),
        "ttv": split_file(wildcards.dataset, "ttv"),
        **ingest_files(wildcards.dataset),
        **_caption_files(),
        "heads": _fold_files(wildcards, "head.json"),
        "projections": _fold_files(wildcards, "projection.safetensors"),
        "text_towers": _fold_files(wildcards, "text_tower.safetensors"),
        "fold_metrics": _fold_files(wildcards, "metrics.json"),
    }


def submit_cfg(wildcards):
    return stage_params(
        "submit_text3d",
        {
            "seed": config["seed"],
            "dataset": wildcards.dataset,
            "method": wildcards.method,
            "align": _align_cfg(),
            "text": _text_cfg(),
            "folds": ALIGN["folds"],
        },
    )


# ---------------------------------------------------------------------------------------------- retrieval head
def retrieval_head_inputs(wildcards):
    # the cache (index + shards) feeds the hand-crafted descriptor floor evaluated beside the head
    return {
        "shape_embeddings": shape_embedding(wildcards.dataset, wildcards.method),
        **ingest_files(wildcards.dataset),
        "ttv": split_file(wildcards.dataset, "ttv"),
        "qg": split_file(wildcards.dataset, "qg"),
        **cache_inputs(wildcards.dataset),
    }


def retrieval_head_cfg(wildcards):
    return stage_params(
        "train_retrieval_head",
        {
            "seed": config["seed"],
            "dataset": wildcards.dataset,
            "method": wildcards.method,
            "head": _without(RETRIEVAL, "datasets", "method"),
            "text": _text_cfg(),
        },
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


def head_targets():
    targets = []
    if METRIC_HEAD["space"]:
        targets.append(f"{RESULTS}/heads/metric/{METRIC_HEAD['space']}/metrics.json")
    for ds in ALIGN["datasets"]:
        folder = f"{RESULTS}/align_text3d/{ds}/{ALIGN['method']}"
        targets += [
            f"{folder}/submission_text2mesh.csv",
            f"{folder}/submission_mesh2text.csv",
            f"{folder}/metrics.json",
        ]
    targets += [f"{RESULTS}/heads/retrieval/{ds}/{RETRIEVAL['method']}/metrics.json" for ds in RETRIEVAL["datasets"]]
    return targets
