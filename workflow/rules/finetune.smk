# Fine-tuning: few-shot classifiers per (dataset, row, K, seed) and N-way K-shot episodes, and their tables.
# Rows (finetune.methods): the descriptor floor, scratch, a pretrained method, or <method>-linear (frozen encoder).
# Outputs: results/finetune/{dataset}/{method}/k{k}/s{seed}/metrics.json   one few-shot job (K=0: full train split)
#          results/tables/fewshot/{dataset}.{md,csv}                     mean ± std over seeds per method and K
#          results/finetune_episodes/{dataset}/{method}/{setting}/f{fold}/metrics.json   one N-way K-shot episode
#          results/tables/episodes/{dataset}.{md,csv}                    mean ± std over folds per method and setting
# Resume state lives under results/_state/ (undeclared: Snakemake deletes declared outputs before a job starts).


rule finetune_classifier:
    input:
        unpack(finetune_inputs),
    output:
        metrics=f"{RESULTS}/finetune/{{dataset}}/{{method}}/k{{k}}/s{{seed}}/metrics.json",
    log:
        f"{RESULTS}/logs/finetune_classifier/{{dataset}}/{{method}}/k{{k}}/s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune_classifier/{{dataset}}/{{method}}/k{{k}}/s{{seed}}.tsv"
    threads: finetune_threads  # 1 for torch + one per DataLoader worker
    resources:
        mem_mb=4000,
        runtime=scaled_runtime(6 * 60),
        gpu=row_gpu,
    params:
        cfg=finetune_cfg,
        inputs=input_json,
        state=f"{STATE}/finetune/{{dataset}}/{{method}}/k{{k}}/s{{seed}}",
    shell:
        "{PY:q} -m pipeline3d.stages.finetune_classifier"
        " --params {params.cfg:q} --inputs {params.inputs:q}"
        " --state-dir {params.state:q} --metrics {output.metrics:q} --threads {threads} > {log:q} 2>&1"


rule tabulate_fewshot:
    input:
        metrics=lambda wildcards: finetune_metrics(wildcards.dataset),
    output:
        table=f"{RESULTS}/tables/fewshot/{{dataset}}.md",
        csv=f"{RESULTS}/tables/fewshot/{{dataset}}.csv",
    log:
        f"{RESULTS}/logs/tabulate_fewshot/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tabulate_fewshot/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=scaled_runtime(10),
    params:
        cfg=lambda wildcards: stage_params(
            "tabulate_fewshot", {"dataset": wildcards.dataset, "methods": FINETUNE["methods"]}
        ),
    shell:
        "{PY:q} -m pipeline3d.stages.tabulate_fewshot --params {params.cfg:q} --metrics {input.metrics:q}"
        " --table {output.table:q} --csv {output.csv:q} > {log:q} 2>&1"


rule finetune_episode:
    input:
        unpack(episode_inputs),
    output:
        metrics=f"{RESULTS}/finetune_episodes/{{dataset}}/{{method}}/{{setting}}/f{{fold}}/metrics.json",
    log:
        f"{RESULTS}/logs/finetune_episode/{{dataset}}/{{method}}/{{setting}}/f{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune_episode/{{dataset}}/{{method}}/{{setting}}/f{{fold}}.tsv"
    threads: finetune_threads  # 1 for torch + one per DataLoader worker
    resources:
        mem_mb=4000,
        runtime=scaled_runtime(6 * 60),
        gpu=row_gpu,
    params:
        cfg=episode_cfg,
        inputs=input_json,
        state=f"{STATE}/finetune_episodes/{{dataset}}/{{method}}/{{setting}}/f{{fold}}",
    shell:
        "{PY:q} -m pipeline3d.stages.finetune_episode"
        " --params {params.cfg:q} --inputs {params.inputs:q}"
        " --state-dir {params.state:q} --metrics {output.metrics:q} --threads {threads} > {log:q} 2>&1"


rule tabulate_episodes:
    input:
        metrics=lambda wildcards: episode_metrics(wildcards.dataset),
    output:
        table=f"{RESULTS}/tables/episodes/{{dataset}}.md",
        csv=f"{RESULTS}/tables/episodes/{{dataset}}.csv",
    log:
        f"{RESULTS}/logs/tabulate_episodes/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/tabulate_episodes/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=scaled_runtime(10),
    params:
        cfg=lambda wildcards: stage_params(
            "tabulate_episodes", {"dataset": wildcards.dataset, "methods": FINETUNE["methods"]}
        ),
    shell:
        "{PY:q} -m pipeline3d.stages.tabulate_episodes --params {params.cfg:q} --metrics {input.metrics:q}"
        " --table {output.table:q} --csv {output.csv:q} > {log:q} 2>&1"
