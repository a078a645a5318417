# Inputs, params and targets of the head rules (heads.smk): the metric-learning head, the text-3D alignment and its
# submission, the retrieval head. Built on embed_inputs.smk (embedding paths, split files, the text config). Each
# params function keeps only what changes that job's output (no sweep lists), as there.
METRIC_HEAD = config["metric_head"]
ALIGN = config["align_text3d"]
RETRIEVAL = config["retrieval_head"]


wildcard_constraints:
    variant=r"[A-Za-z0-9_.-]+",


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
def is_image_dataset(dataset):
    return DATASETS[dataset]["kind"] == "image"


def head_model(dataset, method):
    """What a retrieval or PromptSG job of ``dataset`` builds on: the 3D encoder ``method`` for shapes, the image
    backbone of embed.image for images."""
    return EMBED["image"]["name"] if is_image_dataset(dataset) else method


def frozen_vectors(dataset, model):
    """The frozen embeddings of a dataset: the retrieval head's input and PromptSG's raw floor."""
    if is_image_dataset(dataset):
        return {"image_embeddings": embedding_path("image", dataset, model)}
    return {"shape_embeddings": shape_embedding(dataset, model)}


def retrieval_head_inputs(wildcards):
    # a shape dataset's cache (index + shards) feeds the hand-crafted descriptor floor evaluated beside the head
    return {
        **frozen_vectors(wildcards.dataset, wildcards.method),
        **ingest_files(wildcards.dataset),
        "ttv": split_file(wildcards.dataset, "ttv"),
        "qg": split_file(wildcards.dataset, "qg"),
        **({} if is_image_dataset(wildcards.dataset) else cache_inputs(wildcards.dataset)),
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
    return targets + retrieval_head_targets() + promptsg_targets()


def retrieval_head_targets(datasets=None):
    return [
        f"{RESULTS}/heads/retrieval/{ds}/{head_model(ds, RETRIEVAL['method'])}/metrics.json"
        for ds in (RETRIEVAL["datasets"] if datasets is None else datasets)
    ]


# the retrieval head's {method}: a pretrain method (shapes) or the image backbone's name (images)
HEAD_MODELS = "|".join(re.escape(name) for name in [*all_row_names(config), EMBED["image"]["name"]])


# ---------------------------------------------------------------------------------------------- PromptSG
PROMPTSG = config["promptsg"]


def promptsg_inputs(wildcards):
    files = {
        **ingest_files(wildcards.dataset),
        "ttv": split_file(wildcards.dataset, "ttv"),
        "qg": split_file(wildcards.dataset, "qg"),
        **frozen_vectors(wildcards.dataset, head_model(wildcards.dataset, PROMPTSG["method"])),
    }
    if is_image_dataset(wildcards.dataset):
        return files | {"store": f"{RESULTS}/ingest/{wildcards.dataset}/items.h5"}
    method = PROMPTSG["method"]
    return files | {
        **cache_inputs(wildcards.dataset),
        "weights": f"{RESULTS}/models/{method}/encoder.safetensors",
        "encoder_json": f"{RESULTS}/models/{method}/encoder.json",
    }


def promptsg_cfg(wildcards):
    image = is_image_dataset(wildcards.dataset)
    backbone = (
        {"image": {k: EMBED["image"].get(k) for k in IMAGE_BACKBONE_KEYS}} if image else {"tokens": config["tokens"]}
    )
    return stage_params(
        "train_promptsg",
        {
            "seed": config["seed"],
            "dataset": wildcards.dataset,
            "variant": wildcards.variant,
            "kind": "image" if image else "shape",
            "method": head_model(wildcards.dataset, PROMPTSG["method"]),
            "promptsg": _without(PROMPTSG, "datasets", "variants", "method"),
            "variant_settings": PROMPTSG["variants"][wildcards.variant],
            **backbone,
            "text": _text_cfg(),
        },
    )


def promptsg_targets():
    return [
        f"{RESULTS}/heads/promptsg/{ds}/{variant}/metrics.json"
        for ds in PROMPTSG["datasets"]
        for variant in sorted(PROMPTSG["variants"])  # dict order is not config: a reordered config is the same
    ]
