"""Per-stage code versions.

Bump a stage's number whenever a change alters what that stage writes. The number travels in the rule's
``params`` (see ``stage_params`` in workflow/rules/common.smk), so Snakemake's params trigger reruns exactly
that stage and its dependents. Kept import-cheap: common.smk reads it at parse time.
"""

STAGE_VERSIONS: dict[str, int] = {
    "make_demo_data": 2,
    "ingest_dataset": 2,
    "build_cache_shard": 4,
    "index_cache": 1,
    "fingerprint_dataset": 1,
    "make_splits": 2,
    "materialize_unpaired": 2,
    "pretrain_encoder": 1,
    "finetune_classifier": 3,
    "tabulate_fewshot": 2,
    "finetune_episode": 1,
    "tabulate_episodes": 1,
    "embed_image": 1,
    "embed_text": 1,
    "embed_shape": 1,
    "difficulty_bands": 1,
    "tune_metric_head": 1,
    "train_metric_head": 1,
    "align_text3d": 2,
    "submit_text3d": 1,
    "train_retrieval_head": 3,
    "train_promptsg": 1,
    "eval_ucpr": 1,
    "eval_cpac": 1,
    "report": 2,
}

# On-disk schema of cache shards; readers refuse any other value.
CACHE_SCHEMA_VERSION = 2
