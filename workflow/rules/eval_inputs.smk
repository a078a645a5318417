# Inputs, params and targets of the evaluation and report rules (eval.smk, report.smk).
UCPR = config["eval"]["ucpr"]
CPAC = config["eval"]["cpac"]
TABLES = ["fewshot", "ucpr", "cpac", "retrieval", "text3d"]
PLOTS = ["fewshot_accuracy", "recall_at_k"]


wildcard_constraints:
    query="|".join(BACKENDS),
    gallery="|".join(BACKENDS),
    context="|".join(BACKENDS),


def eval_inputs(wildcards):
    """An evaluation job reads the dataset's cache, splits and one pretrained encoder."""
    return {
        **ingest_files(wildcards.dataset),
        "unpaired": split_file(wildcards.dataset, "unpaired"),
        "ttv": split_file(wildcards.dataset, "ttv"),
        **cache_inputs(wildcards.dataset),
        "weights": f"{RESULTS}/models/{wildcards.method}/encoder.safetensors",
        "encoder_json": f"{RESULTS}/models/{wildcards.method}/encoder.json",
    }


def ucpr_threads(wildcards):
    """One torch thread + the tokenizing workers (see embed_shape_threads)."""
    return 1 + int(UCPR["num_workers"])


def ucpr_cfg(wildcards):
    return stage_params(
        "eval_ucpr",
        {
            "seed": config["seed"],
            "dataset": wildcards.dataset,
            "method": wildcards.method,
            "query": wildcards.query,
            "gallery": wildcards.gallery,
            "ucpr": _without(UCPR, "datasets", "methods", "pairs", "num_workers"),
            "tokens": config["tokens"],
        },
    )


def cpac_cfg(wildcards):
    return stage_params(
        "eval_cpac",
        {
            "seed": config["seed"],
            "dataset": wildcards.dataset,
            "method": wildcards.method,
            "context_backend": wildcards.context,
            "cpac": _without(CPAC, "datasets", "methods", "context_backends"),
            "tokens": config["tokens"],
        },
    )


def ucpr_metrics():
    return [
        f"{RESULTS}/eval/ucpr/{ds}/{method}/{query}--{gallery}.json"
        for ds in UCPR["datasets"]
        for method in UCPR["methods"]
        for query, gallery in UCPR["pairs"]
    ]


def cpac_metrics():
    return [
        f"{RESULTS}/eval/cpac/{ds}/{method}/{context}.json"
        for ds in CPAC["datasets"]
        for method in CPAC["methods"]
        for context in CPAC["context_backends"]
    ]


def report_inputs(wildcards=None):
    """Every metrics JSON the tables are made of (named lists; an empty list is a section without results)."""
    align = ALIGN["datasets"]
    return {
        "finetune": [path for ds in FINETUNE["datasets"] for path in finetune_metrics(ds)],
        "ucpr": ucpr_metrics(),
        "cpac": cpac_metrics(),
        "metric_heads": [f"{RESULTS}/heads/metric/{METRIC_HEAD['space']}/metrics.json"] if METRIC_HEAD["space"] else [],
        "retrieval_heads": retrieval_head_targets(),
        "promptsg": promptsg_targets(),
        "align": [f"{RESULTS}/align_text3d/{ds}/{ALIGN['method']}/metrics.json" for ds in align],
    }


def report_cfg(wildcards):
    return stage_params(
        "report",
        {
            "datasets": sorted(DATASETS),
            "finetune": {key: FINETUNE[key] for key in ("datasets", "methods", "k", "seeds")},
            "title": config["report"]["title"],
        },
    )


def report_targets():
    return (
        [f"{RESULTS}/tables/{name}.{ext}" for name in TABLES for ext in ("md", "csv", "tex")]
        + [f"{RESULTS}/tables/summary.md", f"{RESULTS}/tables/metrics.jsonl"]
        + [f"{RESULTS}/plots/{name}.png" for name in PLOTS]
    )
