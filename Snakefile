# pipeline3d: raw archives -> manifest -> cache shards -> fingerprints -> splits (-> pretrain, embed, eval, report).
# Wiring only: the logic lives in src/pipeline3d; each rule calls `python -m pipeline3d.stages.<rule>`.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/pretrain_inputs.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune_inputs.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/embed_inputs.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/heads_inputs.smk"
include: "workflow/rules/heads.smk"
include: "workflow/rules/eval_inputs.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


# Seconds of work each: on a cluster they run beside Snakemake instead of waiting in the queue.
localrules:
    all,
    data_all,
    embed_all,
    promptsg_all,
    tabulate_fewshot,
    tabulate_episodes,
    report,


rule all:
    default_target: True
    input:
        data_targets(),
        model_targets(),
        embedding_targets(),
        head_targets(),
        ucpr_metrics(),
        cpac_metrics(),
        report_targets(),


rule data_all:
    input:
        data_targets(),


rule embed_all:
    input:
        embedding_targets(),


rule promptsg_all:
    input:
        promptsg_targets(),
        retrieval_head_targets(PROMPTSG["datasets"]),  # the frozen-vector baseline of each PromptSG dataset
